"""The tools on offer: the built-ins switched on by AGENT_TOOLS, plus any registered in code."""

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
    def __init__(self, tools: Iterable[Tool[Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        self._schemas: list[dict[str, Any]] = []
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool[Any]) -> None:
        if tool.name in self._tools:
            raise ValueError(f"A tool named {tool.name!r} is already registered.")
        self._tools[tool.name] = tool
        self._schemas = [t.schema() for t in self._tools.values()]  # built once, sent every call

    def get(self, name: str) -> Tool[Any] | None:
        return self._tools.get(name)

    @property
    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self) -> list[dict[str, Any]]:
        return self._schemas


def build_registry(settings: Settings, extra: Sequence[Tool[Any]] = ()) -> ToolRegistry:
    available = builtin_tools()
    unknown = [name for name in settings.enabled_tools if name not in available]
    if unknown:
        raise ValueError(f"AGENT_TOOLS names unknown tools: {', '.join(unknown)} (known: {', '.join(available)})")
    return ToolRegistry([*(available[name] for name in settings.enabled_tools), *extra])
