"""MCP_SERVERS: the remote MCP servers whose tools the agent may use, as the operator configured them.

The value is JSON, or a path to a JSON or YAML file, holding a list of servers (or
`{"servers": [...]}`). Each server: `name`, `url` (streamable HTTP), optional `headers` (values
may reference environment variables as `${NAME}`, resolved once at start-up), optional `tools`
(an allow-list of the server's own tool names) and `timeout` (seconds per call).

Every problem is reported as one line naming the entry; header values never appear in it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an RFC 9110 token
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class McpServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Prefix of the server's tools as the model sees them: <name>__<tool>.")
    url: str
    headers: dict[str, SecretStr] = Field(default_factory=dict)
    tools: tuple[str, ...] | None = None  # the server's tool names to offer; None offers all
    timeout: float | None = Field(default=None, gt=0, le=3600)  # seconds per call; None = AGENT_TOOL_TIMEOUT

    @field_validator("name")
    @classmethod
    def _simple_name(cls, value: str) -> str:
        if not SERVER_NAME.match(value):
            raise ValueError("must be 1-32 letters, digits, '_' or '-', starting with a letter or digit")
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) <= len("https://"):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("headers", mode="before")
    @classmethod
    def _expand_env(cls, value: object) -> object:
        if not isinstance(value, Mapping):
            return value
        expanded: dict[str, object] = {}
        for key, raw in value.items():
            if not isinstance(key, str) or not HEADER_NAME.match(key):
                raise ValueError(f"{str(key)[:40]!r} is not a valid header name")
            if isinstance(raw, SecretStr):
                raw = raw.get_secret_value()
            if not isinstance(raw, str):
                raise ValueError(f"the value of header {key!r} must be a string")
            resolved = _expand(raw, key)
            if any(c in resolved for c in "\r\n\0"):
                raise ValueError(f"the value of header {key!r} contains a line break")
            expanded[key] = resolved
        return expanded


def _expand(raw: str, header: str) -> str:
    def lookup(match: re.Match[str]) -> str:
        value = os.environ.get(match.group(1))
        if value is None:
            raise ValueError(f"header {header!r} references ${{{match.group(1)}}}, which is not set")
        return value

    return ENV_REFERENCE.sub(lookup, raw)


def problem(exc: ValidationError) -> str:
    """A validation error as one line naming the field; it never quotes the input (a secret, maybe)."""
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    # The message never quotes the input: it may be a header value.
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def load_value(value: str) -> Any:
    """Inline JSON, or the path of a JSON or YAML file, as data; a ValueError says what is wrong
    without quoting the file."""
    try:
        return _load(value)
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the file: {type(exc).__name__}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    except ValueError:
        raise
    except Exception as exc:  # a YAML syntax error, whose text may quote the file
        raise ValueError(f"is not valid YAML ({type(exc).__name__})") from None


def _load(value: str) -> Any:
    text = value.strip()
    if text.startswith(("[", "{")):
        return json.loads(text)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"is neither JSON nor a readable file: {text[:80]!r}")
    content = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        return yaml.safe_load(content)
    return json.loads(content)


def parse_mcp_servers(value: object) -> tuple[McpServerConfig, ...]:
    """MCP_SERVERS as validated server entries; a ValueError names the first bad entry."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        value = load_value(value)
    if isinstance(value, Mapping) and set(value) == {"servers"}:
        value = value["servers"]
    if isinstance(value, McpServerConfig):
        value = [value]
    if not isinstance(value, list | tuple):
        raise ValueError('must be a list of servers (or {"servers": [...]})')
    servers: list[McpServerConfig] = []
    for index, entry in enumerate(value, start=1):
        label = f"entry {index}"
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            label += f" ({entry['name'][:32]!r})"
        elif isinstance(entry, McpServerConfig):
            label += f" ({entry.name!r})"
        try:
            server = entry if isinstance(entry, McpServerConfig) else McpServerConfig.model_validate(entry)
        except ValidationError as exc:
            raise ValueError(f"{label}: {problem(exc)}") from None
        if any(s.name == server.name for s in servers):
            raise ValueError(f"{label}: the name {server.name!r} is used twice")
        servers.append(server)
    return tuple(servers)
