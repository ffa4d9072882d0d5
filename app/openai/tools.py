"""A client's own function tools (either API's shape) as the agent offers them, and tool_choice."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from app.openai.errors import InvalidParam
from app.openai.history import check_characters

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _tool(name: Any, description: Any, parameters: Any, param: str, taken: set[str]) -> dict[str, Any]:
    if not isinstance(name, str) or not NAME.match(name):
        raise InvalidParam(f"{param}.name", "A function name is 1-64 letters, digits, '_' or '-'.")
    if name in taken:
        raise InvalidParam(f"{param}.name", f"The name '{name}' is taken (by another tool, or by one of ours).")
    taken.add(name)
    schema = dict(parameters) if isinstance(parameters, dict) else {}
    schema.setdefault("type", "object")
    if schema["type"] != "object":
        raise InvalidParam(f"{param}.parameters", "Function parameters must be a JSON schema of type 'object'.")
    return {"name": name, "description": description if isinstance(description, str) else "", "input_schema": schema}


def client_tools(
    tools: Iterable[dict[str, Any]] | None, ours: Iterable[str], *, nested: bool
) -> tuple[dict[str, Any], ...]:
    """Function tools → Anthropic tool schemas. `nested`: Chat Completions' {"function": {...}}."""
    taken, out = set(ours), []
    for i, tool in enumerate(tools or []):
        param = f"tools[{i}]"
        if tool.get("type", "function") != "function":
            kind = tool.get("type")
            raise InvalidParam(f"{param}.type", f"Tools of type '{kind}' are not supported: functions only.")
        check_characters(tool, param)
        spec = tool.get("function") if nested else tool
        if not isinstance(spec, dict):
            raise InvalidParam(f"{param}.function", "A function tool needs its function.")
        where = f"{param}.function" if nested else param
        out.append(_tool(spec.get("name"), spec.get("description"), spec.get("parameters"), where, taken))
    return tuple(out)


def tool_choice(choice: str | dict[str, Any] | None, names: Iterable[str]) -> dict[str, Any] | None:
    """OpenAI's tool_choice (either API) → Anthropic's; applied to the turn's first model call."""
    if choice is None or choice == "auto":
        return None
    if choice == "none":
        return {"type": "none"}
    if choice == "required":
        return {"type": "any"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        spec = choice.get("function")
        name = spec.get("name") if isinstance(spec, dict) else choice.get("name")
        if name not in set(names):
            raise InvalidParam("tool_choice", f"No tool named '{name}' is on offer.")
        return {"type": "tool", "name": name}
    raise InvalidParam("tool_choice", "tool_choice is 'auto', 'none', 'required' or a function.")
