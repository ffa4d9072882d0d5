"""MCP tools as the agent sees them: namespaced names, the tool type, results rendered as text."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import mcp_types
from jsonschema.validators import validator_for  # type: ignore[import-untyped]
from mcp import MCPError
from pydantic import BaseModel, ConfigDict

from app.agent.tools.base import Tool

TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")  # what the Messages API accepts
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_-]")
MAX_DESCRIPTION_CHARS = 2000
MAX_LIST_PAGES = 20
# The loop's own deadline for an MCP call: ours (the server's `timeout`) fires first, so that a
# time-out is reported and counted as one; this is only a backstop.
BACKSTOP_SECONDS = 2.0
SSE_READ_TIMEOUT = 300.0  # a listen stream is idle between events (servers ping every ~15 s)


def model_tool_name(server: str, tool: str) -> str:
    """`<server>__<tool>` within ^[a-zA-Z0-9_-]{1,64}$; a name that had to change gets a hash suffix,
    so two remote names never map to one."""
    raw = f"{server}__{tool}"
    if TOOL_NAME.match(raw):
        return raw
    digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
    return f"{_NOT_NAME.sub('_', raw)[:55]}_{digest}"


class McpArguments(BaseModel):
    """Whatever object the model sent: checked against the server's JSON schema, not a model."""

    model_config = ConfigDict(extra="allow")


@dataclass(frozen=True, eq=False)
class McpTool(Tool[McpArguments]):
    server: str = ""
    remote_name: str = ""
    input_schema: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "input_schema": self.input_schema}


def _byte_size(b64: str) -> int:
    return max(0, len(b64) * 3 // 4 - b64[-2:].count("="))


def render_result(result: mcp_types.CallToolResult) -> str:
    """The result as text for the model: text as it is, anything else as a short placeholder."""
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        elif isinstance(block, mcp_types.ImageContent):
            parts.append(f"[image: {block.mime_type[:100]}, {_byte_size(block.data)} bytes]")
        elif isinstance(block, mcp_types.AudioContent):
            parts.append(f"[audio: {block.mime_type[:100]}, {_byte_size(block.data)} bytes]")
        elif isinstance(block, mcp_types.ResourceLink):
            parts.append(f"[resource link: {block.uri[:200]}]")
        elif isinstance(block, mcp_types.EmbeddedResource):
            resource = block.resource
            mime = (resource.mime_type or "unknown type")[:100]
            if isinstance(resource, mcp_types.TextResourceContents):
                size = f"{len(resource.text)} characters"
            else:
                size = f"{_byte_size(resource.blob)} bytes"
            parts.append(f"[resource: {resource.uri[:200]}, {mime}, {size}]")
        else:  # a content type newer than this code
            parts.append(f"[{getattr(block, 'type', 'unknown')} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


def describe(exc: BaseException) -> str:
    """An error as /readyz and the log may show it: its type (and MCP error code), never its text,
    which may quote a URL or what the server said."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return f"MCPError {exc.code}"
    return type(exc).__name__


def schema_validator(schema: dict[str, Any]) -> Any | None:
    try:
        cls = validator_for(schema)
        cls.check_schema(schema)
        return cls(schema)
    except Exception:  # SchemaError, or a schema jsonschema cannot read: the server checks the arguments
        return None


def input_problems(validator: Any | None, arguments: dict[str, Any]) -> list[str]:
    if validator is None:
        return []
    try:
        errors = list(itertools.islice(validator.iter_errors(arguments), 5))
    except Exception:  # a schema jsonschema cannot apply (a bad pattern, a remote $ref): the server decides
        return []
    return [f"{'.'.join(map(str, e.absolute_path)) or 'input'}: {e.message}" for e in errors]
