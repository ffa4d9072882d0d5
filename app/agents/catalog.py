"""The agents as the running service holds them: each with its model client and its view of the tools.

Built by the lifespan from `Settings.agent_set`. Agents that share a provider, base URL and key share
one client; each distinct client is closed by the lifespan, in reverse order of building.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from app.agent.registry import ToolRegistry
from app.agent.tools.base import Tool
from app.agents.errors import AgentNotFound
from app.core.agents_config import AgentConfig
from app.core.config import Settings
from app.llm.base import ChatModel


class ToolView:
    """The registry as one agent sees it: only the tools its patterns name (None: all of them).

    A tool outside the list is neither offered nor run: `get` does not know it, so a call the model
    forges for one is answered as an unknown tool (an `is_error` result).
    """

    def __init__(
        self, registry: ToolRegistry, patterns: tuple[str, ...] | None, approval: tuple[str, ...] = ()
    ) -> None:
        self.registry, self.patterns, self.approval = registry, patterns, approval
        self._seen: list[dict[str, Any]] | None = None
        self._schemas: list[dict[str, Any]] = []
        self._names: list[str] = []

    def allows(self, name: str) -> bool:
        return self.patterns is None or any(fnmatchcase(name, pattern) for pattern in self.patterns)

    def needs_approval(self, name: str) -> bool:
        """A call of this tool waits for a person's yes (the agent's `approval` patterns)."""
        return any(fnmatchcase(name, pattern) for pattern in self.approval)

    def _sync(self) -> None:
        # The registry replaces its schema list when its tools change (MCP servers come and go).
        current = self.registry.schemas()
        if current is self._seen:
            return
        self._seen = current
        if self.patterns is None:
            self._schemas, self._names = current, self.registry.names
        else:
            self._schemas = [schema for schema in current if self.allows(schema["name"])]
            self._names = [schema["name"] for schema in self._schemas]

    def schemas(self) -> list[dict[str, Any]]:
        self._sync()
        return self._schemas

    @property
    def names(self) -> list[str]:
        self._sync()
        return self._names

    def get(self, name: str) -> Tool[Any] | None:
        return self.registry.get(name) if self.allows(name) else None


@dataclass(frozen=True, slots=True)
class ServedAgent:
    config: AgentConfig
    llm: ChatModel
    tools: ToolView
    max_steps: int
    max_tokens: int

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def model(self) -> str:
        return self.config.model_name

    @property
    def provider(self) -> str:
        return self.config.provider

    def system_prompt(self, conversation_system: str | None) -> str | None:
        """The agent's prompt, then the conversation's own (a client's `system`), when either is set."""
        parts = [part for part in (self.config.system, conversation_system) if part]
        return "\n\n".join(parts) or None


class AgentCatalog:
    def __init__(self, agents: Iterable[ServedAgent], default: str) -> None:
        self._agents = {agent.name: agent for agent in agents}
        self.default = self._agents[default]

    def __contains__(self, name: str) -> bool:
        return name in self._agents

    @property
    def names(self) -> list[str]:
        return list(self._agents)

    def usable(self, allowed: tuple[str, ...] | None) -> list[ServedAgent]:
        """The agents a key may use, in configuration order (`allowed` None: all of them)."""
        return [agent for agent in self._agents.values() if allowed is None or agent.name in allowed]

    def resolve(self, name: str | None, allowed: tuple[str, ...] | None) -> ServedAgent:
        """The named agent (None: the default), if the key may use it; else AgentNotFound (404)."""
        agent = self._agents.get(name if name is not None else self.default.name)
        if agent is None or (allowed is not None and agent.name not in allowed):
            raise AgentNotFound(name or self.default.name)
        return agent


def provider_settings(settings: Settings, agent: AgentConfig) -> Settings:
    """The settings an agent's client is built from: its provider, base URL and key, or the
    provider's variables where it names none."""
    if agent.provider == "anthropic":
        update: dict[str, Any] = {
            "llm_provider": "anthropic",
            "anthropic_base_url": agent.base_url or settings.anthropic_base_url,
            "anthropic_api_key": agent.api_key or settings.anthropic_api_key,
        }
    elif agent.provider == "openai":
        update = {
            "llm_provider": "openai",
            "openai_base_url": agent.base_url or settings.openai_base_url,
            "openai_api_key": agent.api_key or settings.openai_api_key,
        }
    else:
        update = {"llm_provider": "offline"}
    return settings.model_copy(update=update)


def client_key(settings: Settings) -> tuple[str, str | None, str | None]:
    """Agents whose clients would be built alike share one."""
    if settings.provider == "anthropic":
        key = settings.anthropic_api_key
        return "anthropic", settings.anthropic_base_url, key.get_secret_value() if key is not None else None
    if settings.provider == "openai":
        key = settings.openai_api_key
        return "openai", settings.openai_base_url, key.get_secret_value() if key is not None else None
    return "offline", None, None


def build_catalog(
    settings: Settings,
    tools: ToolRegistry,
    stack: AsyncExitStack,
    create_llm: Callable[[Settings], ChatModel],
) -> AgentCatalog:
    """Every agent with its client (one per distinct provider, base URL and key, closed by `stack`)."""
    clients: dict[tuple[str, str | None, str | None], ChatModel] = {}
    served: list[ServedAgent] = []
    agent_set = settings.agent_set
    for config in agent_set.agents:
        own = provider_settings(settings, config)
        key = client_key(own)
        llm = clients.get(key)
        if llm is None:
            llm = clients[key] = create_llm(own)
            stack.push_async_callback(llm.aclose)
        served.append(
            ServedAgent(
                config,
                llm,
                ToolView(tools, config.tools, config.approval),
                max_steps=config.max_steps or settings.agent_max_steps,
                max_tokens=config.max_tokens or settings.llm_max_tokens,
            )
        )
    return AgentCatalog(served, agent_set.default_name)
