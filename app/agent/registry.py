"""The tools on offer: the built-ins switched on by AGENT_TOOLS or named by an agent, plus any registered in code."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from app.agent.tools.base import Tool
from app.agent.tools.calculator import calculator
from app.agent.tools.clock import current_time_tool
from app.agent.tools.fetch_url import make_fetch_url
from app.agent.tools.memory import recall_tool, remember_tool
from app.core.config import Settings


def builtin_tools() -> dict[str, Tool[Any]]:
    tools: list[Tool[Any]] = [calculator, current_time_tool, remember_tool, recall_tool, make_fetch_url()]
    return {tool.name: tool for tool in tools}


class ToolRegistry:
    """Static tools (built-ins, code-registered) plus tools that sources (MCP servers) swap at run time.

    `get()` and `schemas()` run on every tool and model call, so both read structures built when the
    set changes; the static tools' schemas are computed once. A turn keeps the schema list it
    started with: a change replaces the list, never mutates it.
    """

    def __init__(self, tools: Iterable[Tool[Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        self._static_schemas: list[dict[str, Any]] = []
        self._sources: dict[str, dict[str, Tool[Any]]] = {}
        self._status: dict[str, str] = {}
        self._all: dict[str, Tool[Any]] = {}
        self._schemas: list[dict[str, Any]] = []
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool[Any]) -> None:
        if tool.name in self._all:
            raise ValueError(f"A tool named {tool.name!r} is already registered.")
        self._tools[tool.name] = tool
        self._static_schemas.append(tool.schema())  # built once, sent every call
        self._rebuild()

    def replace(self, source: str, tools: Iterable[Tool[Any]]) -> list[str]:
        """Make `tools` everything `source` offers now; returns the names refused as already taken."""
        taken = set(self._tools).union(*(set(t) for name, t in self._sources.items() if name != source))
        kept: dict[str, Tool[Any]] = {}
        refused: list[str] = []
        for tool in tools:
            if tool.name in taken or tool.name in kept:
                refused.append(tool.name)
            else:
                kept[tool.name] = tool
        self._sources[source] = kept
        self._rebuild()
        return refused

    def remove(self, source: str) -> None:
        if self._sources.pop(source, None) is not None:
            self._rebuild()

    def _rebuild(self) -> None:
        dynamic = [tool for tools in self._sources.values() for tool in tools.values()]
        self._all = {**self._tools, **{tool.name: tool for tool in dynamic}}
        self._schemas = [*self._static_schemas, *(tool.schema() for tool in dynamic)]

    def get(self, name: str) -> Tool[Any] | None:
        return self._all.get(name)

    def needs_approval(self, name: str) -> bool:
        return False  # the registry itself gates nothing: an agent's view of it does (app/agents)

    @property
    def names(self) -> list[str]:
        return list(self._all)

    def schemas(self) -> list[dict[str, Any]]:
        return self._schemas

    def set_status(self, source: str, status: str) -> None:
        """What /readyz reports for a source ("ok", "connecting", "down (…)"); never a secret."""
        self._status[source] = status

    def clear_status(self, source: str) -> None:
        self._status.pop(source, None)

    def statuses(self) -> dict[str, str]:
        return dict(self._status)


def build_registry(settings: Settings, extra: Sequence[Tool[Any]] = ()) -> ToolRegistry:
    available = builtin_tools()
    unknown = [name for name in settings.enabled_tools if name not in available]
    if unknown:
        raise ValueError(f"AGENT_TOOLS names unknown tools: {', '.join(unknown)} (known: {', '.join(available)})")
    wanted = list(settings.enabled_tools)
    # A built-in an agent names exactly is switched on for it (patterns select among tools that are on:
    # `*` must not switch on fetch_url, which is opt-in).
    for agent in settings.agents.agents if settings.agents is not None else ():
        wanted += [name for name in agent.tools or () if name in available and name not in wanted]
    return ToolRegistry([*(available[name] for name in wanted), *extra])
