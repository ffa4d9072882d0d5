"""A fake LLM provider for tests: Anthropic Messages API and OpenAI chat completions.

The fake speaks the wire protocols closely enough that the official ``anthropic``
SDK (JSON and SSE) and plain OpenAI-compatible clients work against it unchanged.
Behaviour is scripted by directives written in the last user message, e.g.
``"hi [[slow:0.1]] [[words:50]]"``; see ``parse_directives`` for the full list.

It also validates conversation histories the way the real API does, so a test
can assert that the service under test never sent an invalid one
(``server.state.rejections == []``).

Usage::

    with FakeLLMServer() as fake:
        client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="test")
        ...
        assert fake.state.rejections == []

Standalone (for subprocess end-to-end tests and benchmarks)::

    python -m tests.fakes.llm_server --port 8765
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

JSONDict = dict[str, Any]

MAX_RECORDED_REQUESTS = 1000
TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

# Error "type" of the Anthropic error body, by HTTP status.
ANTHROPIC_ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

# (type, code) of the OpenAI error body, by HTTP status.
OPENAI_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
}


# --------------------------------------------------------------------------- state


@dataclass
class FakeLLMState:
    """Everything the fake remembers. One instance per app, safe to read from any thread."""

    require_openai_key: bool = False
    request_count: int = 0
    open_streams: int = 0
    max_open_streams: int = 0
    closed_by_client: int = 0
    recorded_requests: deque[JSONDict] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED_REQUESTS))
    # Reasons for every 400/401 the fake produced by itself (not by a directive).
    rejections: list[str] = field(default_factory=list)
    # How often each exact last-user text was seen, for [[fail_first]].
    fail_counts: dict[str, int] = field(default_factory=dict)
    # Set when the server shuts down, so hanging/slow responses give up promptly.
    stopping: threading.Event = field(default_factory=threading.Event)
    # The server runs on its own thread; tests read and reset from theirs.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, body: JSONDict | None) -> None:
        with self.lock:
            self.request_count += 1
            if body is not None:
                self.recorded_requests.append(body)

    def reject(self, reason: str) -> None:
        with self.lock:
            self.rejections.append(reason)

    def bump_fail_count(self, key: str) -> int:
        with self.lock:
            self.fail_counts[key] = self.fail_counts.get(key, 0) + 1
            return self.fail_counts[key]

    def stream_opened(self) -> None:
        with self.lock:
            self.open_streams += 1
            self.max_open_streams = max(self.max_open_streams, self.open_streams)

    def stream_closed(self, *, by_client: bool) -> None:
        with self.lock:
            self.open_streams -= 1
            if by_client:
                self.closed_by_client += 1

    def request_bodies(self) -> list[JSONDict]:
        """A copy of the recorded request bodies, most recent last."""
        with self.lock:
            return list(self.recorded_requests)

    def stats(self) -> JSONDict:
        with self.lock:
            return {
                "requests": self.request_count,
                "open_streams": self.open_streams,
                "max_open_streams": self.max_open_streams,
                "closed_by_client": self.closed_by_client,
                "rejections": list(self.rejections),
            }

    def reset(self) -> None:
        with self.lock:
            self.request_count = 0
            # Streams still being written stay counted, or the gauge would go negative.
            self.max_open_streams = self.open_streams
            self.closed_by_client = 0
            self.recorded_requests.clear()
            self.rejections.clear()
            self.fail_counts.clear()


# --------------------------------------------------------------------------- directives


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


# --------------------------------------------------------------------------- conversation helpers


class InvalidRequest(Exception):
    """The request would be rejected by the real API; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _count_words(value: Any) -> int:
    """Rough token count: whitespace-separated words in every string, recursively."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(_count_words(v) for k, v in value.items() if k not in ("type", "role", "id", "tool_use_id"))
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    return 0


def _has_cache_control(value: Any) -> bool:
    if isinstance(value, dict):
        return "cache_control" in value or any(_has_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(v) for v in value)
    return False


def _blocks(content: Any) -> list[JSONDict]:
    """Content as a list of blocks (string content becomes one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _text_of(content: Any) -> str:
    return "\n".join(b["text"] for b in _blocks(content) if b.get("type") == "text" and isinstance(b.get("text"), str))


def _last_user_text(messages: Sequence[JSONDict]) -> str:
    """The last text block of the most recent user message that has one: what the user just said.

    Only the last block counts, so that a service which merges an unanswered earlier turn into the
    next user message does not replay that turn's directives (tool_result-only turns are skipped).
    """
    for message in reversed(messages):
        texts = (
            [
                b["text"]
                for b in _blocks(message.get("content"))
                if b.get("type") == "text" and isinstance(b.get("text"), str) and b["text"]
            ]
            if message.get("role") == "user"
            else []
        )
        if texts:
            return str(texts[-1])
    return ""


def _split_pieces(text: str) -> list[str]:
    """Word-sized pieces whose concatenation is exactly ``text``."""
    pieces = re.findall(r"\s*\S+", text)
    rest = text[len("".join(pieces)) :]
    if rest:
        if pieces:
            pieces[-1] += rest
        else:
            pieces = [rest]
    return pieces


def _split_json(value: JSONDict, size: int = 12) -> list[str]:
    raw = json.dumps(value)
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


# --------------------------------------------------------------------------- validation


def validate_anthropic(body: JSONDict) -> None:
    """Raise InvalidRequest for what the real Messages API would reject with a 400."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be a valid integer greater than or equal to 1")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream: Input should be a valid boolean")
    _validate_system(body.get("system"))
    tools = _validate_tools(body.get("tools"))

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: at least one message is required")
    for i, message in enumerate(messages):
        _validate_message(i, message, is_final=i == len(messages) - 1)
    if messages[0]["role"] != "user":
        raise InvalidRequest('messages: first message must use the "user" role')
    for i in range(1, len(messages)):
        if messages[i]["role"] == messages[i - 1]["role"]:
            raise InvalidRequest(
                f'messages.{i}: roles must alternate between "user" and "assistant", '
                f'but found two consecutive "{messages[i]["role"]}" messages'
            )
    _validate_tool_pairing(messages, tools_defined=bool(tools))

    final = messages[-1]
    if final["role"] == "assistant":
        final_blocks = _blocks(final["content"])
        if (
            final_blocks
            and final_blocks[-1].get("type") == "text"
            and final_blocks[-1]["text"] != final_blocks[-1]["text"].rstrip()
        ):
            raise InvalidRequest("messages: final assistant content cannot end with trailing whitespace")


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise InvalidRequest("system: Input should be a valid string or a list of text blocks")
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest(f"system.{j}: only text blocks are allowed in system")
        _validate_text_block(f"system.{j}", block)


def _validate_tools(tools: Any) -> list[JSONDict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("tools: Input should be a valid list")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools.{i}: Input should be an object")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
            raise InvalidRequest(
                f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$' (got {name!r})"
            )
        if name in seen:
            raise InvalidRequest(f"tools: Tool names must be unique (duplicate {name!r})")
        seen.add(name)
        if tool.get("type", "custom") == "custom" and not isinstance(tool.get("input_schema"), dict):
            raise InvalidRequest(f"tools.{i}.custom.input_schema: Field required")
    return tools


def _validate_text_block(where: str, block: JSONDict) -> None:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}.text: Field required")
    if not text:
        raise InvalidRequest(f"{where}: text content blocks must be non-empty")
    if not text.strip():
        raise InvalidRequest(f"{where}: text content blocks must contain non-whitespace text")


_EMPTY_CONTENT = "all messages must have non-empty content except for the optional final assistant message"


def _validate_message(i: int, message: Any, *, is_final: bool) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"messages.{i}: Input should be an object")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant' (got {role!r})")
    content = message.get("content")
    # Only a final assistant message (a prefill) may be empty.
    may_be_empty = is_final and role == "assistant"
    if isinstance(content, str):
        if content == "" and not may_be_empty:
            raise InvalidRequest(f"messages.{i}: {_EMPTY_CONTENT}")
        if content and not content.strip():
            raise InvalidRequest(f"messages.{i}: text content blocks must contain non-whitespace text")
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"messages.{i}.content: Input should be a valid string or list of content blocks")
    if not content and not may_be_empty:
        raise InvalidRequest(f"messages.{i}: {_EMPTY_CONTENT}")
    for j, block in enumerate(content):
        where = f"messages.{i}.content.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"{where}: content blocks must be objects with a 'type'")
        kind = block["type"]
        if kind == "text":
            _validate_text_block(where, block)
        elif kind == "tool_use":
            if role != "assistant":
                raise InvalidRequest(f"{where}: tool_use blocks are only allowed in assistant messages")
            if not isinstance(block.get("id"), str) or not block["id"]:
                raise InvalidRequest(f"{where}.id: Field required")
            if not isinstance(block.get("name"), str) or not TOOL_NAME_RE.match(block["name"]):
                raise InvalidRequest(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if not isinstance(block.get("input"), dict):
                raise InvalidRequest(f"{where}.input: Input should be a valid dictionary")
        elif kind == "tool_result":
            if role != "user":
                raise InvalidRequest(f"{where}: tool_result blocks are only allowed in user messages")
            if not isinstance(block.get("tool_use_id"), str):
                raise InvalidRequest(f"{where}.tool_use_id: Field required")
            inner_content = block.get("content")
            if isinstance(inner_content, list):
                for k, inner in enumerate(_blocks(inner_content)):
                    if inner.get("type") == "text":
                        _validate_text_block(f"{where}.content.{k}", inner)


def _tool_use_ids(message: JSONDict) -> list[str]:
    return [b["id"] for b in _blocks(message["content"]) if b.get("type") == "tool_use"]


def _validate_tool_pairing(messages: list[JSONDict], *, tools_defined: bool) -> None:
    seen_ids: set[str] = set()
    for i, message in enumerate(messages):
        blocks = _blocks(message["content"])
        if any(b.get("type") in ("tool_use", "tool_result") for b in blocks) and not tools_defined:
            raise InvalidRequest("Requests which include `tool_use` or `tool_result` blocks must define tools.")
        if message["role"] == "assistant":
            ids = _tool_use_ids(message)
            for tool_id in ids:
                if tool_id in seen_ids:
                    raise InvalidRequest(f"messages.{i}: `tool_use` ids must be unique (duplicate {tool_id})")
                seen_ids.add(tool_id)
            if not ids:
                continue
            following = messages[i + 1] if i + 1 < len(messages) else None
            answered = set()
            if following is not None:
                answered = {
                    b.get("tool_use_id") for b in _blocks(following["content"]) if b.get("type") == "tool_result"
                }
            missing = [tool_id for tool_id in ids if tool_id not in answered]
            if missing:
                raise InvalidRequest(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message."
                )
            continue
        # A user message: its tool_result blocks must answer the previous assistant turn, and come first.
        previous_ids = set(_tool_use_ids(messages[i - 1])) if i > 0 else set()
        answered_here: set[str] = set()
        seen_other = False
        for j, block in enumerate(blocks):
            if block.get("type") != "tool_result":
                seen_other = True
                continue
            tool_use_id = block["tool_use_id"]
            if seen_other:
                raise InvalidRequest(
                    f"messages.{i}.content.{j}: `tool_result` blocks must come before any other content "
                    "in the message that answers a `tool_use`"
                )
            if tool_use_id not in previous_ids:
                raise InvalidRequest(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{tool_use_id}. Each `tool_result` block must have a corresponding `tool_use` block "
                    "in the previous message."
                )
            if tool_use_id in answered_here:
                raise InvalidRequest(f"messages.{i}.content.{j}: duplicate `tool_result` for {tool_use_id}")
            answered_here.add(tool_use_id)


def _unanswered_tool_calls(pending: set[str]) -> InvalidRequest:
    return InvalidRequest(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(sorted(pending))}"
    )


def validate_openai(body: JSONDict) -> None:
    """Light validation of a chat completions request, with OpenAI's wording."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("Invalid 'messages': empty array. Expected an array with minimum length 1.")
    pending: set[str] = set()  # tool_call ids still waiting for a tool message
    offered: set[str] = set()  # ids the latest assistant message asked for
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"Invalid type for 'messages[{i}]': expected an object.")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise InvalidRequest(f"Invalid value for 'messages[{i}].role': {role!r}.")
        if role != "tool" and pending:
            raise _unanswered_tool_calls(pending)
        if role == "assistant":
            calls = message.get("tool_calls") or []
            offered = {c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)}
            pending = set(offered)
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in offered:
                raise InvalidRequest(
                    f"Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    f"with 'tool_calls' (messages[{i}], tool_call_id={call_id!r})."
                )
            pending.discard(call_id)
    if pending:
        raise _unanswered_tool_calls(pending)


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    input: JSONDict


@dataclass
class Answer:
    """What the fake model says, independent of the wire format."""

    text: str
    tool_calls: list[ToolCall]
    stop_reason: str  # Anthropic vocabulary: end_turn, tool_use, max_tokens, ...

    @property
    def output_tokens(self) -> int:
        tool_words = sum(1 + _count_words(json.dumps(c.input)) for c in self.tool_calls)
        return max(1, len(self.text.split()) + tool_words)


def plan_answer(
    directives: Directives,
    user_text: str,
    tool_results: list[tuple[str, bool]] | None,
    tool_rounds: int,
    id_prefix: str,
) -> Answer:
    """Decide the answer. ``tool_results`` is set when the last turn carries tool results."""
    if directives.tools and (tool_results is None or tool_rounds < directives.tool_chain):
        names = ", ".join(t.name for t in directives.tools)
        preamble = directives.reply if directives.reply is not None else f"Let me use {names}."
        calls = [ToolCall(_new_id(id_prefix), t.name, t.input) for t in directives.tools]
        answer = Answer(preamble, calls, "tool_use")
    elif tool_results is not None:
        text = "tool results: " + "; ".join(("ERROR " if is_error else "") + out for out, is_error in tool_results)
        answer = Answer(text, [], "end_turn")
    elif directives.reply is not None:
        answer = Answer(directives.reply, [], "end_turn")
    elif directives.words is not None:
        answer = Answer(" ".join(f"word{n}" for n in range(1, directives.words + 1)), [], "end_turn")
    else:
        answer = Answer(f"echo: {user_text}".strip(), [], "end_turn")
    if directives.stop:
        answer.stop_reason = directives.stop
    return answer


def _anthropic_tool_results(messages: list[JSONDict]) -> tuple[list[tuple[str, bool]] | None, int]:
    """(results of the last message if it carries tool_result blocks, number of tool_result rounds)."""

    def results_of(message: JSONDict) -> list[JSONDict]:
        if message.get("role") != "user":
            return []
        return [b for b in _blocks(message.get("content")) if b.get("type") == "tool_result"]

    rounds = sum(1 for m in messages if results_of(m))
    last = results_of(messages[-1])
    if not last:
        return None, rounds
    texts = []
    for block in last:
        content = block.get("content")
        text = (
            content
            if isinstance(content, str)
            else " ".join(
                b["text"] for b in _blocks(content) if b.get("type") == "text" and isinstance(b.get("text"), str)
            )
        )
        texts.append((text, bool(block.get("is_error"))))
    return texts, rounds


def _openai_tool_results(messages: list[JSONDict]) -> tuple[list[tuple[str, bool]] | None, int]:
    rounds = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
    trailing: list[tuple[str, bool]] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        content = message.get("content")
        trailing.insert(0, (content if isinstance(content, str) else _openai_text(content), False))
    return (trailing or None), rounds


def _openai_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


# --------------------------------------------------------------------------- response plumbing


@dataclass(frozen=True)
class Pause:
    """Sleep in the middle of a response; ``math.inf`` hangs until disconnect or shutdown."""

    seconds: float


class Abort:
    """Kill the connection at this point, without finishing the response."""


Step = bytes | Pause | Abort


class _Aborted(Exception):
    pass


class DropConnection(Exception):
    """Raised out of the ASGI app so uvicorn closes the socket mid-response."""


class _DropFilter(logging.Filter):
    """Hide uvicorn's traceback for connections we drop on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DropConnection))


_DROP_FILTER = _DropFilter()


def _install_log_filter() -> None:
    # addFilter ignores a filter that is already installed.
    logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)


class PlannedResponse:
    """An ASGI response that plays a list of steps and watches for the client going away.

    ``before_headers`` runs first (delays, hangs), then the status line and headers
    are sent, then ``body``. While it runs, a watcher task listens for
    ``http.disconnect`` so a hanging or slow response notices a vanished client.
    """

    def __init__(
        self,
        state: FakeLLMState,
        *,
        status: int,
        headers: dict[str, str],
        body: list[Step],
        before_headers: Iterable[Pause] = (),
        is_stream: bool = False,
    ) -> None:
        self.state = state
        self.status = status
        self.headers = dict(headers)
        if not is_stream:  # a plain JSON answer goes out with a length, like the real API's
            self.headers["content-length"] = str(sum(len(step) for step in body if isinstance(step, bytes)))
        self.body = body
        self.before_headers = list(before_headers)
        self.is_stream = is_stream
        self._finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client_gone = False
        aborted = False
        if self.is_stream:
            self.state.stream_opened()
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    nonlocal client_gone
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    # uvicorn also reports a disconnect once the response is complete.
                    if not self._finished:
                        client_gone = True
                        tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                try:
                    await self._play(send)
                except _Aborted:
                    aborted = True
                except OSError:  # some servers raise on send after a disconnect
                    client_gone = True
                tg.cancel_scope.cancel()
        finally:
            if self.is_stream:
                self.state.stream_closed(by_client=client_gone)
        if aborted and not client_gone:
            raise DropConnection("fake LLM server dropped the connection on purpose")

    async def _play(self, send: Send) -> None:
        for pause in self.before_headers:
            await self._pause(pause.seconds)
        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw_headers})
        for step in self.body:
            if isinstance(step, Pause):
                await self._pause(step.seconds)
            elif isinstance(step, Abort):
                raise _Aborted
            else:
                await send({"type": "http.response.body", "body": step, "more_body": True})
        self._finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pause(self, seconds: float) -> None:
        # Sleep in short slices so a server shutdown interrupts hangs promptly.
        deadline = time.monotonic() + seconds
        while True:
            if self.state.stopping.is_set():
                raise _Aborted
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await anyio.sleep(min(remaining, 0.05))


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _sse(event: str, data: JSONDict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _sse_data(data: JSONDict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def _cut_after_deltas(steps: list[Step], delta_positions: list[int], tail: list[Step], keep: int = 2) -> list[Step]:
    """Keep the stream up to its ``keep``-th text delta, then append ``tail``."""
    if len(delta_positions) >= keep:
        cut = delta_positions[keep - 1] + 1
    elif delta_positions:
        cut = delta_positions[-1] + 1
    else:
        cut = 1  # just the opening event
    return steps[:cut] + tail


# --------------------------------------------------------------------------- Anthropic rendering


def _anthropic_error_body(status: int, message: str, request_id: str) -> JSONDict:
    error_type = ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def _anthropic_usage(body: JSONDict) -> JSONDict:
    input_tokens = max(1, _count_words(body.get("system")) + _count_words(body.get("messages")))
    cached = _has_cache_control(body)
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": input_tokens // 2 if cached else 0,
        "output_tokens": 1,
        "service_tier": "standard",
    }


def _anthropic_blocks(answer: Answer) -> list[JSONDict]:
    blocks: list[JSONDict] = [{"type": "text", "text": answer.text}] if answer.text else []
    blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in answer.tool_calls]
    return blocks


def anthropic_message(answer: Answer, model: str, usage: JSONDict) -> JSONDict:
    return {
        "id": _new_id("msg_fake_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _anthropic_blocks(answer),
        "stop_reason": answer.stop_reason,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": answer.output_tokens},
    }


def anthropic_stream(answer: Answer, model: str, usage: JSONDict, directives: Directives) -> list[Step]:
    """The SSE event sequence of the real API for ``answer``, with directive effects applied."""
    start = anthropic_message(answer, model, usage)
    start.update(content=[], stop_reason=None, usage={**usage, "output_tokens": 1})
    steps: list[Step] = [_sse("message_start", {"type": "message_start", "message": start})]
    if directives.hang:
        return [*steps, Pause(math.inf)]

    delta_positions: list[int] = []
    blocks = _anthropic_blocks(answer)
    if not blocks:
        steps.append(_sse("ping", {"type": "ping"}))
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            opening: JSONDict = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _split_pieces(block["text"])]
        else:
            # Tool input arrives as JSON fragments; the start event carries an empty input.
            opening = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in _split_json(block["input"])]
        steps.append(
            _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})
        )
        if index == 0:
            steps.append(_sse("ping", {"type": "ping"}))
        for delta in deltas:
            if directives.slow:
                steps.append(Pause(directives.slow))
            delta_positions.append(len(steps))
            steps.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        steps.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    steps.append(
        _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": answer.output_tokens},
            },
        )
    )
    steps.append(_sse("message_stop", {"type": "message_stop"}))

    if directives.midstream_error:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return _cut_after_deltas(steps, delta_positions, [_sse("error", error)])
    if directives.drop:
        return _cut_after_deltas(steps, delta_positions, [Abort()])
    return steps


# --------------------------------------------------------------------------- OpenAI rendering


def _openai_error_body(status: int, message: str) -> JSONDict:
    error_type, code = OPENAI_ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": error_type, "param": None, "code": code}}


_FINISH_REASONS = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length", "refusal": "content_filter"}


def _openai_usage(body: JSONDict, answer: Answer) -> JSONDict:
    prompt_tokens = max(1, _count_words(body.get("messages")))
    cached = prompt_tokens // 2 if _has_cache_control(body) else 0
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": answer.output_tokens,
        "total_tokens": prompt_tokens + answer.output_tokens,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _openai_tool_call(call: ToolCall) -> JSONDict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": json.dumps(call.input)}}


def openai_completion(answer: Answer, model: str, usage: JSONDict) -> JSONDict:
    message: JSONDict = {"role": "assistant", "content": answer.text or None, "refusal": None}
    if answer.tool_calls:
        message["tool_calls"] = [_openai_tool_call(c) for c in answer.tool_calls]
    return {
        "id": _new_id("chatcmpl-fake"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _FINISH_REASONS.get(answer.stop_reason, "stop"),
            }
        ],
        "usage": usage,
    }


def openai_stream(
    answer: Answer, model: str, usage: JSONDict, directives: Directives, include_usage: bool
) -> list[Step]:
    base: JSONDict = {
        "id": _new_id("chatcmpl-fake"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    if include_usage:
        base["usage"] = None  # OpenAI sends "usage": null on every chunk but the last

    def chunk(delta: JSONDict, finish_reason: str | None = None) -> bytes:
        return _sse_data(
            {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        )

    steps: list[Step] = [chunk({"role": "assistant", "content": "", "refusal": None})]
    if directives.hang:
        return [*steps, Pause(math.inf)]
    delta_positions: list[int] = []

    def add_delta(delta: JSONDict) -> None:
        if directives.slow:
            steps.append(Pause(directives.slow))
        delta_positions.append(len(steps))
        steps.append(chunk(delta))

    for piece in _split_pieces(answer.text):
        add_delta({"content": piece})
    for k, call in enumerate(answer.tool_calls):
        add_delta(
            {
                "tool_calls": [
                    {"index": k, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
                ]
            }
        )
        for piece in _split_json(call.input):
            add_delta({"tool_calls": [{"index": k, "function": {"arguments": piece}}]})
    steps.append(chunk({}, _FINISH_REASONS.get(answer.stop_reason, "stop")))
    if include_usage:
        steps.append(_sse_data({**base, "choices": [], "usage": usage}))
    steps.append(_sse_data("[DONE]"))

    if directives.midstream_error:
        error = {"error": {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded"}}
        return _cut_after_deltas(steps, delta_positions, [_sse_data(error)])
    if directives.drop:
        return _cut_after_deltas(steps, delta_positions, [Abort()])
    return steps


# --------------------------------------------------------------------------- the app


_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
_JSON_HEADERS = {"content-type": "application/json"}


def _bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def create_app(state: FakeLLMState | None = None, *, require_openai_key: bool = False) -> Starlette:
    """Build the fake's ASGI app. Each app has its own state (``app.state.fake``).

    ``require_openai_key`` only applies when no ``state`` is passed (it is a state field).
    """
    fake = state if state is not None else FakeLLMState(require_openai_key=require_openai_key)

    async def read_body(request: Request) -> JSONDict | None:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        fake.record(body if isinstance(body, dict) else None)
        return body if isinstance(body, dict) else None

    def error_response(
        dialect: str, status: int, message: str, *, directives: Directives | None = None, retryable: bool = False
    ) -> PlannedResponse:
        request_id = _new_id("req_fake_")
        headers = {**_JSON_HEADERS, "request-id": request_id}
        if dialect == "anthropic":
            payload = _anthropic_error_body(status, message, request_id)
        else:
            payload = _openai_error_body(status, message)
        if retryable:
            headers["retry-after-ms"] = "10"
        else:
            headers["x-should-retry"] = "false"
            if status in (429, 529):
                headers["retry-after"] = "7"
        before = [Pause(directives.delay_first)] if directives and directives.delay_first else []
        return PlannedResponse(fake, status=status, headers=headers, body=[_json_bytes(payload)], before_headers=before)

    def reject(dialect: str, status: int, message: str) -> PlannedResponse:
        fake.reject(message)
        return error_response(dialect, status, message)

    def scripted_failure(dialect: str, directives: Directives, user_text: str, stream: bool) -> PlannedResponse | None:
        """A failure requested by [[status]], [[fail_first]] or JSON-mode [[midstream_error]]."""
        if directives.midstream_error and not stream:
            return error_response(dialect, 529, "Overloaded", directives=directives)
        if directives.status is not None:
            return error_response(dialect, directives.status, f"Fake error {directives.status}", directives=directives)
        if directives.fail_first is not None:
            count, status = directives.fail_first
            if fake.bump_fail_count(user_text) <= count:
                return error_response(
                    dialect, status, f"Fake transient error {status}", directives=directives, retryable=True
                )
        return None

    def sse_reply(directives: Directives, steps: list[Step]) -> PlannedResponse:
        before = [Pause(directives.delay_first)] if directives.delay_first else []
        headers = {**_SSE_HEADERS, "request-id": _new_id("req_fake_")}
        return PlannedResponse(fake, status=200, headers=headers, body=steps, before_headers=before, is_stream=True)

    def json_reply(directives: Directives, payload: JSONDict) -> PlannedResponse:
        before = [Pause(directives.delay_first)] if directives.delay_first else []
        if directives.hang:
            before.append(Pause(math.inf))
        elif directives.slow:
            before.append(Pause(directives.slow))
        headers = {**_JSON_HEADERS, "request-id": _new_id("req_fake_")}
        return PlannedResponse(fake, status=200, headers=headers, body=[_json_bytes(payload)], before_headers=before)

    async def messages(request: Request) -> PlannedResponse:
        body = await read_body(request)
        # SDK 2.x sends the API key as "Authorization: Bearer"; older clients use x-api-key.
        if not request.headers.get("x-api-key") and not _bearer_token(request):
            return reject("anthropic", 401, "x-api-key or Authorization: Bearer header is required")
        if not request.headers.get("anthropic-version"):
            return reject("anthropic", 400, "anthropic-version: header is required")
        if body is None:
            return reject("anthropic", 400, "The request body is not valid JSON.")
        try:
            validate_anthropic(body)
            user_text = _last_user_text(body["messages"])
            directives, clean_text = parse_directives(user_text)
        except (InvalidRequest, DirectiveError) as exc:
            return reject("anthropic", 400, str(exc))

        stream = bool(body.get("stream"))
        if failure := scripted_failure("anthropic", directives, user_text, stream):
            return failure
        results, rounds = _anthropic_tool_results(body["messages"])
        answer = plan_answer(directives, clean_text, results, rounds, "toolu_fake")
        usage = _anthropic_usage(body)
        if stream:
            return sse_reply(directives, anthropic_stream(answer, body["model"], usage, directives))
        return json_reply(directives, anthropic_message(answer, body["model"], usage))

    async def chat_completions(request: Request) -> PlannedResponse:
        body = await read_body(request)
        if fake.require_openai_key and not _bearer_token(request):
            return reject(
                "openai", 401, "You didn't provide an API key. Provide it in the Authorization header (Bearer)."
            )
        if body is None:
            return reject("openai", 400, "We could not parse the JSON body of your request.")
        try:
            validate_openai(body)
            messages = body["messages"]
            user_text = next(
                (t for m in reversed(messages) if m.get("role") == "user" and (t := _openai_text(m.get("content")))), ""
            )
            directives, clean_text = parse_directives(user_text)
        except (InvalidRequest, DirectiveError) as exc:
            return reject("openai", 400, str(exc))

        stream = bool(body.get("stream"))
        if failure := scripted_failure("openai", directives, user_text, stream):
            return failure
        results, rounds = _openai_tool_results(messages)
        answer = plan_answer(directives, clean_text, results, rounds, "call_fake")
        usage = _openai_usage(body, answer)
        if stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return sse_reply(directives, openai_stream(answer, body["model"], usage, directives, include_usage))
        return json_reply(directives, openai_completion(answer, body["model"], usage))

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(fake.stats())

    async def recorded(_: Request) -> JSONResponse:
        return JSONResponse(fake.request_bodies())

    async def reset(_: Request) -> JSONResponse:
        fake.reset()
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/_stats", stats, methods=["GET"]),
            Route("/_requests", recorded, methods=["GET"]),
            Route("/_reset", reset, methods=["POST"]),
        ]
    )
    app.state.fake = fake
    return app


# --------------------------------------------------------------------------- serving


class _UvicornServer(uvicorn.Server):
    """uvicorn.Server that wakes hanging responses when shutting down, so it never waits on them."""

    def __init__(self, config: uvicorn.Config, state: FakeLLMState) -> None:
        super().__init__(config)
        self.fake_state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.fake_state.stopping.set()
        await super().shutdown(sockets)


def _uvicorn_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=3)
    _install_log_filter()  # after Config, which (re)configures uvicorn's loggers
    return config


class FakeLLMServer:
    """Runs the fake on 127.0.0.1 and a free port, in a background thread.

    Use as ``with FakeLLMServer() as fake:`` or ``async with FakeLLMServer() as fake:``;
    ``fake.url`` is the base URL, ``fake.state`` the live FakeLLMState.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", require_openai_key: bool = False, start_timeout: float = 10.0
    ) -> None:
        self.host = host
        self.start_timeout = start_timeout
        self.state = FakeLLMState(require_openai_key=require_openai_key)
        self.app = create_app(self.state)
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        # Bind here and hand the socket to uvicorn: no race for the port number.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        port = sock.getsockname()[1]
        self.state.stopping.clear()
        server = _UvicornServer(_uvicorn_config(self.app, self.host, port), self.state)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"fake-llm-{port}", daemon=True)
        thread.start()
        self._server, self._thread, self._port = server, thread, port

        deadline = time.monotonic() + self.start_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FakeLLMServer failed to start")
            time.sleep(0.005)
        with socket.create_connection((self.host, port), timeout=self.start_timeout):
            pass  # accepting connections

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self.state.stopping.set()
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = self._thread = None

    def reset(self) -> None:
        self.state.reset()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # start/stop block briefly; keep the caller's event loop responsive.
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Fake Anthropic/OpenAI LLM server for tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--require-openai-key", action="store_true")
    args = parser.parse_args(argv)
    state = FakeLLMState(require_openai_key=args.require_openai_key)
    server = _UvicornServer(_uvicorn_config(create_app(state), args.host, args.port), state)
    print(f"fake LLM server on http://{args.host}:{args.port}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
