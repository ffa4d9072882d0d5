"""AGENTS: the named agents one deployment serves, as the operator configured them.

The value is JSON, or a path to a JSON or YAML file (see agents.example.yaml):
`{"default": "assistant", "agents": [{"name": ..., "provider": ..., "model": ..., ...}]}` (or just the
list). String values may reference environment variables as `${NAME}`, resolved once at start-up.
Without AGENTS, one agent named `agentchat` is built from LLM_* and AGENT_* (see Settings.agents).

Every problem is one line naming the agent and the field; `api_key` never appears in it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from app.core.mcp_config import ENV_REFERENCE, load_value, problem

AGENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
DEFAULT_AGENT = "agentchat"  # the agent built from LLM_* when AGENTS is unset; the old /v1 model id

Provider = Literal["anthropic", "openai", "offline"]
Compaction = Literal["auto", "off", "provider"]


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="The id clients use: /chat's `agent`, /v1's `model`.")
    description: str = ""
    provider: Provider
    model: str = ""  # required unless offline
    base_url: str | None = None  # None: the provider's variable (ANTHROPIC_BASE_URL, OPENAI_BASE_URL)
    api_key: SecretStr | None = None  # None: the provider's variable (ANTHROPIC_API_KEY, OPENAI_API_KEY)
    system: str | None = None
    # Tool names as the model sees them (built-ins, code-registered, MCP `<server>__<tool>`), `*`
    # patterns allowed; None offers every tool.
    tools: tuple[str, ...] | None = None
    # Tools whose calls wait for a person's approval (names and `*` patterns, MCP tools included).
    approval: tuple[str, ...] = ()
    max_steps: int | None = Field(default=None, ge=1, le=50)  # None: AGENT_MAX_STEPS
    max_tokens: int | None = Field(default=None, ge=1, le=64000)  # None: LLM_MAX_TOKENS
    # Long conversations (app/turns/compaction.py): the model's window in tokens (None: known per
    # model), the fraction of it at which the history is compacted, the model that writes the
    # summary (None: the agent's own), or `off` (the oldest turns are dropped past the budget), or
    # `provider`: Anthropic's server-side context editing and compaction instead of ours (Anthropic agents only).
    context_window: int | None = Field(default=None, ge=1000)
    compact_at: float = Field(default=0.75, gt=0, le=1)
    summary_model: str | None = None
    compaction: Compaction = "auto"
    # Attached images and PDFs go to the provider's files API once (Anthropic's Files API, beta) and
    # are named by its file id in every call, instead of sent base64 each time. Anthropic agents only.
    provider_files: bool = False

    @field_validator("name")
    @classmethod
    def _simple_name(cls, value: str) -> str:
        if not AGENT_NAME.match(value):
            raise ValueError("must be 1-64 of a-z, 0-9, '_' or '-', starting with a letter or digit")
        return value

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith(("http://", "https://")) or len(value) <= len("https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _has_model(self) -> AgentConfig:
        if self.provider != "offline" and not self.model:
            raise ValueError(f"model: required for provider {self.provider}")
        if self.compaction == "provider" and self.provider != "anthropic":
            raise ValueError(f"compaction: provider needs provider anthropic (not {self.provider})")
        if (
            self.compaction == "provider"
            and self.context_window is not None
            and (self.context_window < PROVIDER_COMPACTION_MIN)
        ):
            raise ValueError(f"compaction: provider needs a context_window of at least {PROVIDER_COMPACTION_MIN:,}")
        return self

    @property
    def model_name(self) -> str:
        """The model that answers, as answers show it: never a real model's name for the offline demo."""
        return "offline" if self.provider == "offline" else self.model


# Anthropic refuses a compaction trigger under this many input tokens (`compaction: provider`).
PROVIDER_COMPACTION_MIN = 50_000


class AgentsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    default: str | None = None  # None: the first agent
    agents: tuple[AgentConfig, ...]

    @property
    def default_name(self) -> str:
        return self.default or self.agents[0].name


def _expand_env(value: object, where: str) -> object:
    """`${VAR}` in every string of an entry, from the environment (a missing one is an error)."""
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            found = os.environ.get(match.group(1))
            if found is None:
                raise ValueError(f"{where} references ${{{match.group(1)}}}, which is not set")
            return found

        return ENV_REFERENCE.sub(lookup, value)
    if isinstance(value, list | tuple):
        return [_expand_env(item, where) for item in value]
    if isinstance(value, Mapping):
        return {key: _expand_env(item, where) for key, item in value.items()}
    return value


def parse_agents(value: object) -> AgentsConfig | None:
    """AGENTS as validated agents; a ValueError names the first bad agent and field."""
    if value is None or value == "":
        return None
    if isinstance(value, AgentsConfig):
        return value
    if isinstance(value, str):
        value = load_value(value)
    if isinstance(value, list | tuple):
        value = {"agents": value}
    if not isinstance(value, Mapping):
        raise ValueError('must be {"default": ..., "agents": [...]} or a list of agents')
    unknown = set(value) - {"default", "agents"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r} (expected default, agents)")
    entries = value.get("agents")
    if not isinstance(entries, list | tuple) or not entries:
        raise ValueError("agents: must be a non-empty list")
    agents: list[AgentConfig] = []
    for index, entry in enumerate(entries, start=1):
        label = f"agent {index}"
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            label = f"agent {entry['name'][:64]!r}"
        elif isinstance(entry, AgentConfig):
            label = f"agent {entry.name!r}"
        try:
            if isinstance(entry, AgentConfig):
                agent = entry
            elif isinstance(entry, Mapping):
                agent = AgentConfig.model_validate({key: _expand_env(item, key) for key, item in entry.items()})
            else:
                raise ValueError("must be a mapping of fields")
        except ValidationError as exc:
            raise ValueError(f"{label}: {problem(exc)}") from None
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from None
        if any(a.name == agent.name for a in agents):
            raise ValueError(f"{label}: the name {agent.name!r} is used twice")
        agents.append(agent)
    default = value.get("default")
    if default is not None and (not isinstance(default, str) or all(a.name != default for a in agents)):
        raise ValueError(f"default: {str(default)[:64]!r} is not one of the agents")
    return AgentsConfig(default=default, agents=tuple(agents))
