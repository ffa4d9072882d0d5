"""What a client sends, as a turn: its history (as conversation rows), the new turn's blocks, and keys.

A call's messages split at the last assistant-side item: everything up to it is the history the
client owns; what follows (user messages, tool results) is the new turn. The history becomes
conversation rows — a user row per run of user-side items, an assistant row per run of the
assistant's (its text, its calls, our own tool calls with their results), as the service stores its
own turns — so the model sees it replayed exactly as a stored conversation would be
(app/agent/history.py repairs it), and a turn that opens a conversation stores it ahead of its
message: a response id then stands for everything the model saw and said.

**Validation.** What no repair can make right is a 400 naming the item, before any model call: a
tool result that answers no call of the assistant turn before it, a call id or function name the
providers refuse (or used twice), a user message without content, text with NUL or lone surrogates.
What a repair can make right (consecutive same-role messages, a history opening with the
assistant's turn, calls left without results, empty text) is repaired on the way to the model.

**History keys** map Chat Completions calls onto conversations. When a turn is recorded, its answer
stores `sha256(owner id, each message of the call, the answer as the client will send it back)`,
every message canonicalised (role, its text without any whitespace, tool calls with their
arguments as sorted JSON). The next call of that chat sends the same messages plus the answer, so
the key of its history up to its last assistant message is that stored key: one indexed,
owner-scoped lookup finds the conversation. No match (first call, or a history the client edited)
opens a new conversation. The owner is hashed in, so another key's identical chat never matches.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from app.core.text import invalid_characters
from app.llm.base import Block
from app.openai.errors import InvalidParam
from app.openai.schemas import ChatMessage
from app.turns.turn import Turn

Row = tuple[str, list[Block]]  # a conversation row: its role and its blocks
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
# What the providers accept (Anthropic's patterns, which OpenAI's function names share).
CALL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,256}$")
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass
class ClientTurn:
    content: list[Block]  # the new turn: tool results first, then text
    text: str  # its text and tool outputs (title, size limit)
    system: str | None = None
    history: list[Row] | None = None  # the client's own history before the turn; None: the stored one
    extends_key: str | None = None
    hasher: Any = field(default=None, repr=False)  # the key's state after the new turn
    # Where each tool result of the new turn came from (its call id → the param that named it).
    results_at: dict[str, str] = field(default_factory=dict)

    def answer_key(self, turn: Turn) -> str | None:
        """The key stored with the answer: the call's messages plus the answer as the client echoes it."""
        if self.hasher is None:
            return None
        hasher = self.hasher.copy()
        calls = [[b["id"], b["name"], _canon_args(b.get("input"))] for b in client_calls(turn)]
        hasher.update(_canon("assistant", turn.text, calls))
        return str(hasher.hexdigest())


def client_calls(turn: Turn) -> list[Block]:
    """The tool_use blocks of the client's own tools that ended the turn."""
    awaiting = set(turn.awaiting)
    return [b for b in turn.transcript.blocks if b.get("type") == "tool_use" and b["id"] in awaiting]


def check_characters(value: Any, param: str) -> None:
    """A 400 naming the first string (or key) in `value` that no provider or database takes."""
    if isinstance(value, str):
        problem = invalid_characters(value)
        if problem is not None:
            raise InvalidParam(param, f"The text {problem}.", code="invalid_characters")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_characters(key, param)
            check_characters(item, f"{param}.{key}" if isinstance(key, str) and key.isidentifier() else param)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_characters(item, f"{param}[{i}]")


class _Rows:
    """A client's history as conversation rows, and the calls its tool results may answer."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.called: set[str] = set()  # every call id so far (ids are unique in a request)
        self.open: set[str] = set()  # the calls of the latest assistant turn, which results answer
        self.side = "user"

    def _side(self, role: str) -> None:
        if role == "assistant" and self.side != "assistant":
            self.open = set()  # a new assistant turn: results now answer its calls only
        self.side = role

    def add(self, role: str, blocks: list[Block]) -> None:
        self._side(role)
        if not blocks:
            return
        if self.rows and self.rows[-1][0] == role:
            self.rows[-1][1].extend(blocks)
        else:
            self.rows.append((role, list(blocks)))

    def call(self, call_id: Any, name: Any, arguments: Any, *, at: str, id_param: str, closed: bool = False) -> Block:
        """A call of the assistant's (a tool_use block), checked; `closed`: its result comes with it."""
        self._side("assistant")
        if not isinstance(call_id, str) or not CALL_ID.match(call_id):
            raise InvalidParam(id_param, "A call id is 1-256 letters, digits, '_' or '-'.")
        if call_id in self.called:
            raise InvalidParam(id_param, f"The call id '{call_id}' is used twice.")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise InvalidParam(f"{at}.name", "A function name is 1-64 letters, digits, '_' or '-'.")
        self.called.add(call_id)
        if not closed:
            self.open.add(call_id)
        return _tool_use(call_id, name, arguments, f"{at}.arguments")

    def result(self, call_id: Any, output: str, param: str) -> Block:
        """A tool result, which must answer a call of the latest assistant turn."""
        if not isinstance(call_id, str) or call_id not in self.open:
            raise InvalidParam(param, f"No call with the id {call_id!r} in the assistant turn before this result.")
        return _result(call_id, output)


def _canon_args(value: Any) -> str:
    if isinstance(value, str):
        raw = value
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canon(role: str, text: str, calls: list[list[str]], call_id: str = "") -> bytes:
    item = [role, "".join(text.split()), calls, call_id]
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode() + b"\x1e"


def _parts_text(content: Any, param: str, allowed: frozenset[str] = TEXT_PARTS) -> str:
    if content is None or isinstance(content, str):
        text = content or ""
    elif not isinstance(content, list):
        raise InvalidParam(param, "Content is a string or a list of text parts.")
    else:
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) and isinstance(part.get("type"), str) else None
            if kind in allowed and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "attachment":
                continue  # a file (app/openai/files.py made it from an image or file part): see _files
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
            else:
                raise InvalidParam(f"{param}[{j}].type", f"Content of type '{kind}' is not supported: text only.")
        text = "\n".join(texts)
    check_characters(text, param)
    return text


def _text_block(text: str) -> list[Block]:
    return [{"type": "text", "text": text}] if text.strip() else []


def _files(content: Any) -> list[Block]:
    """A user message's files, as attachment blocks (app/files/attach.py), ahead of its text."""
    if not isinstance(content, list):
        return []
    return [dict(p) for p in content if isinstance(p, dict) and p.get("type") == "attachment"]


def _files_canon(files: list[Block]) -> str:
    """What a history key hashes of a message's files: their content (the same bytes, the same key)."""
    return "".join(f"\x1ffile:{b.get('sha256', '')}" for b in files)


def _result(call_id: str, output: str) -> Block:
    return {"type": "tool_result", "tool_use_id": call_id, "content": output}


def _tool_use(call_id: str, name: str, arguments: Any, param: str) -> Block:
    if not isinstance(arguments, str):
        raise InvalidParam(param, "The arguments are a JSON object, as a string.")
    check_characters(arguments, param)
    try:
        data = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        raise InvalidParam(param, "The arguments are not valid JSON.") from None
    return {"type": "tool_use", "id": call_id, "name": name, "input": data if isinstance(data, dict) else {}}


def _finish(
    turn: ClientTurn, rows: _Rows | None, results: list[Block], texts: list[str], param: str, files: list[Block]
) -> ClientTurn:
    turn.content = results + files + [b for text in texts for b in _text_block(text)]
    turn.text = "\n".join([*texts, *(str(r["content"]) for r in results)])
    if not turn.content:
        raise InvalidParam(param, "The call has no new turn: end it with a user message or a tool result.")
    turn.history = rows.rows if rows is not None else None
    return turn


def chat_turn(owner_id: uuid.UUID, messages: list[ChatMessage]) -> ClientTurn:
    """A Chat Completions call: the client owns the history; its key finds the conversation."""
    hasher = hashlib.sha256(owner_id.bytes)
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    turn = ClientTurn(content=[], text="", hasher=hasher)
    rows = _Rows()
    systems: list[str] = []
    results: list[Block] = []
    texts: list[str] = []
    new_files: list[Block] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if message.role == "function":
            raise InvalidParam(f"{param}.role", "Legacy function messages are not supported: use tool messages.")
        if message.role == "user" and message.content is None:
            raise InvalidParam(f"{param}.content", "A user message needs its content.")
        text = _parts_text(message.content, f"{param}.content")
        files = _files(message.content) if message.role == "user" else []
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidParam(f"{param}.tool_call_id", "A tool message needs the tool_call_id it answers.")
        calls = [
            rows.call(
                c.id, c.function.name, c.function.arguments, at=f"{param}.tool_calls[{j}].function",
                id_param=f"{param}.tool_calls[{j}].id",
            )
            for j, c in enumerate(message.tool_calls or [])
            if message.role == "assistant"
        ]  # fmt: skip
        hasher.update(
            _canon(
                message.role,
                text + _files_canon(files),
                [[c["id"], c["name"], _canon_args(c["input"])] for c in calls],
                message.tool_call_id or "",
            )
        )
        if message.role in ("system", "developer"):
            systems.append(text)
        elif message.role == "assistant":
            rows.add("assistant", _text_block(text) + calls)
        elif message.role == "tool":
            result = rows.result(message.tool_call_id, text, f"{param}.tool_call_id")
            if i > last:  # the new turn
                results.append(result)
                turn.results_at[result["tool_use_id"]] = f"{param}.tool_call_id"
            else:
                rows.add("user", [result])
        elif i > last:
            texts.append(text)
            new_files.extend(files)
        else:
            rows.add("user", files + _text_block(text))
        if i == last:
            turn.extends_key = hasher.hexdigest()
    turn.system = "\n\n".join(s for s in systems if s.strip()) or None
    return _finish(turn, rows if last >= 0 else None, results, texts, f"messages[{len(messages) - 1}]", new_files)


_ASSISTANT_SIDE = frozenset({"function_call", "mcp_call"})


def _kind(item: dict[str, Any]) -> str:
    return str(item.get("type") or ("message" if "role" in item else ""))


def _answers(item: dict[str, Any]) -> bool:
    """An item of the assistant's side: what the model said or did."""
    return _kind(item) in _ASSISTANT_SIDE or (_kind(item) == "message" and item.get("role") == "assistant")


def responses_turn(input_: str | list[dict[str, Any]], *, continuing: bool) -> ClientTurn:
    """A Responses call's input. With previous_response_id it is the new turn only; without, any
    assistant-side items before its end are a history the client owns (a new conversation)."""
    if isinstance(input_, str):
        if not input_.strip():
            raise InvalidParam("input", "The input must not be empty.")
        check_characters(input_, "input")
        return ClientTurn(content=_text_block(input_), text=input_)
    last = max((i for i, item in enumerate(input_) if _answers(item)), default=-1)
    if continuing and last >= 0:
        raise InvalidParam(
            f"input[{last}]",
            "With previous_response_id, input holds the new turn only: user messages and "
            "function_call_output items (the earlier output is already part of the conversation).",
        )
    turn = ClientTurn(content=[], text="")
    rows = _Rows()
    systems: list[str] = []
    results: list[Block] = []
    texts: list[str] = []
    new_files: list[Block] = []
    for i, item in enumerate(input_):
        param, kind = f"input[{i}]", _kind(item)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidParam(f"{param}.role", f"Unknown role '{role}'.")
            if role != "assistant" and item.get("content") is None:
                raise InvalidParam(f"{param}.content", "A message needs its content.")
            text = _parts_text(item.get("content"), f"{param}.content")
            files = _files(item.get("content")) if role == "user" else []
            if role in ("system", "developer"):
                systems.append(text)
            elif role == "assistant":
                rows.add("assistant", _text_block(text))
            elif i > last:
                texts.append(text)
                new_files.extend(files)
            else:
                rows.add("user", files + _text_block(text))
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _parts_text(output, f"{param}.output")
            check_characters(text, f"{param}.output")
            call_id = item.get("call_id")
            if not isinstance(call_id, str):
                raise InvalidParam(f"{param}.call_id", "A function_call_output needs the call_id it answers.")
            if continuing:  # it answers the previous response: the turn checks that (app/turns/start.py)
                result = _result(call_id, text)
            else:
                result = rows.result(call_id, text, f"{param}.call_id")
            if i > last:
                results.append(result)
                turn.results_at[call_id] = f"{param}.call_id"
            else:
                rows.add("user", [result])
        elif kind == "function_call":
            call_id, arguments = item.get("call_id"), item.get("arguments") or ""
            use = rows.call(call_id, item.get("name"), arguments, at=param, id_param=f"{param}.call_id")
            rows.add("assistant", [use])
        elif kind == "mcp_call":  # one of ours, sent back: the call and its result, as we store them
            call_id = str(item.get("id", "")).removeprefix("mcp_")
            use = rows.call(
                call_id, item.get("name"), item.get("arguments") or "", at=param, id_param=f"{param}.id", closed=True
            )
            error = item.get("error")
            output = str(item.get("output") or (error.get("content") if isinstance(error, dict) else error) or "")
            check_characters(output, f"{param}.output")
            rows.add("assistant", [use, _result(call_id, output)])
        elif kind == "reasoning":
            continue
        else:
            raise InvalidParam(f"{param}.type", f"Input items of type '{kind}' are not supported here.")
    turn.system = "\n\n".join(s for s in systems if s.strip()) or None
    return _finish(turn, rows if last >= 0 else None, results, texts, "input", new_files)
