"""The ``[[...]]`` directives that script the fake's behaviour from the last user message."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from testkit.fake_llm.content import JSONDict


class DirectiveError(ValueError):
    """A malformed directive: a bug in the test, reported back as a 400."""


@dataclass(frozen=True)
class ToolDirective:
    name: str
    input: JSONDict


@dataclass
class Directives:
    reply: str | None = None
    status: int | None = None
    fail_first: tuple[int, int] | None = None  # (count, status)
    slow: float = 0.0
    delay_first: float = 0.0
    hang: bool = False
    words: int | None = None
    midstream_error: bool = False
    drop: bool = False
    tools: list[ToolDirective] = field(default_factory=list)
    tool_chain: int = 1
    stop: str | None = None


_DIRECTIVE_RE = re.compile(r"\[\[([a-z_]+)(:|\]\])")
_FLAG_DIRECTIVES = {"hang", "midstream_error", "drop"}
_ARG_DIRECTIVES = {"reply", "status", "fail_first", "slow", "delay_first", "words", "tool", "tool_chain", "stop"}
_TOOL_NAME_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+")


def parse_directives(text: str) -> tuple[Directives, str]:
    """Split ``text`` into its directives and the remaining text (stripped).

    Directives: ``[[reply:TEXT]]``, ``[[status:CODE]]``, ``[[fail_first:N:CODE]]``,
    ``[[slow:SECONDS]]``, ``[[delay_first:SECONDS]]``, ``[[hang]]``, ``[[words:N]]``,
    ``[[midstream_error]]``, ``[[drop]]``, ``[[tool:NAME {json}]]`` (repeatable),
    ``[[tool_chain:K]]``, ``[[stop:REASON]]``. Unknown ``[[...]]`` is left as text.
    """
    directives = Directives()
    kept: list[str] = []
    pos = 0
    while (start := text.find("[[", pos)) >= 0:
        match = _DIRECTIVE_RE.match(text, start)
        name = match.group(1) if match else ""
        if match is None or name not in _FLAG_DIRECTIVES | _ARG_DIRECTIVES:
            kept.append(text[pos : start + 2])
            pos = start + 2
            continue
        has_arg = match.group(2) == ":"
        if has_arg != (name in _ARG_DIRECTIVES):
            raise DirectiveError(f"directive [[{name}]] {'takes no' if has_arg else 'needs an'} argument")
        end = match.end()
        if name == "tool":
            tool, end = _parse_tool_directive(text, end)
            directives.tools.append(tool)
        elif has_arg:
            close = text.find("]]", end)
            if close < 0:
                raise DirectiveError(f"unterminated directive [[{name}:")
            _apply_directive(directives, name, text[end:close])
            end = close + 2
        else:
            setattr(directives, name, True)
        kept.append(text[pos:start])
        pos = end
    kept.append(text[pos:])
    return directives, "".join(kept).strip()


def _parse_tool_directive(text: str, pos: int) -> tuple[ToolDirective, int]:
    """Parse ``NAME {json}]]`` starting at ``pos``; the JSON may itself contain ``]]``."""
    name_match = _TOOL_NAME_PREFIX_RE.match(text, pos)
    if name_match is None:
        raise DirectiveError("[[tool:...]] needs a tool name")
    pos = name_match.end()
    while pos < len(text) and text[pos].isspace():
        pos += 1
    tool_input: Any = {}
    if not text.startswith("]]", pos):
        try:
            tool_input, pos = json.JSONDecoder().raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DirectiveError(f"[[tool:{name_match.group()} ...]]: bad JSON input: {exc}") from exc
        while pos < len(text) and text[pos].isspace():
            pos += 1
    if not isinstance(tool_input, dict):
        raise DirectiveError(f"[[tool:{name_match.group()} ...]]: input must be a JSON object")
    if not text.startswith("]]", pos):
        raise DirectiveError(f"[[tool:{name_match.group()} ...]]: expected ']]' after the JSON input")
    return ToolDirective(name_match.group(), tool_input), pos + 2


def _apply_directive(directives: Directives, name: str, arg: str) -> None:
    try:
        if name == "reply":
            directives.reply = arg
        elif name == "status":
            directives.status = _status_code(arg)
        elif name == "fail_first":
            count, _, code = arg.partition(":")
            directives.fail_first = (int(count), _status_code(code))
        elif name in ("slow", "delay_first"):
            seconds = float(arg)
            if not seconds >= 0:
                raise ValueError("negative or NaN duration")
            setattr(directives, name, seconds)
        elif name == "words":
            directives.words = max(0, int(arg))
        elif name == "tool_chain":
            directives.tool_chain = max(1, int(arg))
        elif name == "stop":
            directives.stop = arg.strip()
    except ValueError as exc:
        raise DirectiveError(f"bad argument for [[{name}:{arg}]]: {exc}") from exc


def _status_code(arg: str) -> int:
    code = int(arg)
    if not 400 <= code <= 599:
        raise ValueError("status must be 4xx or 5xx")
    return code
