"""What a client sends, as a turn: its history (Anthropic-shaped), the new turn's blocks, and keys.

A call's messages split at the last assistant-side item: everything up to it is the history the
client owns (sent to the model as it is, repaired by app/agent/history.py); what follows (user
messages, tool results) is the new turn, stored in the conversation.

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
import uuid
from dataclasses import dataclass, field
from typing import Any

from app.llm.base import Block
from app.openai.errors import InvalidParam
from app.openai.schemas import ChatMessage
from app.turns.turn import Turn

Msg = dict[str, Any]
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


@dataclass
class ClientTurn:
    content: list[Block]  # the new turn: tool results first, then text
    text: str  # its text and tool outputs (title, size limit)
    system: str | None = None
    history: list[Msg] | None = None  # the client's own history before the turn; None: the stored one
    extends_key: str | None = None
    hasher: Any = field(default=None, repr=False)  # the key's state after the new turn

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
        return content or ""
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind in allowed and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise InvalidParam(f"{param}[{j}].type", f"Content of type '{kind}' is not supported: text only.")
    return "\n".join(texts)


def _text_block(text: str) -> list[Block]:
    return [{"type": "text", "text": text}] if text.strip() else []


def _result(call_id: str, output: str) -> Block:
    return {"type": "tool_result", "tool_use_id": call_id, "content": output}


def _tool_use(call_id: str, name: str, arguments: str, param: str) -> Block:
    try:
        data = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        raise InvalidParam(param, "The arguments are not valid JSON.") from None
    return {"type": "tool_use", "id": call_id, "name": name, "input": data if isinstance(data, dict) else {}}


def _finish(turn: ClientTurn, results: list[Block], texts: list[str], param: str) -> ClientTurn:
    turn.content = results + [b for text in texts for b in _text_block(text)]
    turn.text = "\n".join([*texts, *(str(r["content"]) for r in results)])
    if not turn.content:
        raise InvalidParam(param, "The call has no new turn: end it with a user message or a tool result.")
    return turn


def chat_turn(owner_id: uuid.UUID, messages: list[ChatMessage]) -> ClientTurn:
    """A Chat Completions call: the client owns the history; its key finds the conversation."""
    hasher = hashlib.sha256(owner_id.bytes)
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    turn = ClientTurn(content=[], text="", history=[] if last >= 0 else None, hasher=hasher)
    systems: list[str] = []
    results: list[Block] = []
    texts: list[str] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        text = _parts_text(message.content, f"{param}.content")
        if message.role == "function":
            raise InvalidParam(f"{param}.role", "Legacy function messages are not supported: use tool messages.")
        if message.role == "tool" and not message.tool_call_id:
            raise InvalidParam(f"{param}.tool_call_id", "A tool message needs the tool_call_id it answers.")
        calls = [
            _tool_use(c.id, c.function.name, c.function.arguments, f"{param}.tool_calls[{j}].function.arguments")
            for j, c in enumerate(message.tool_calls or [])
        ]
        hasher.update(
            _canon(
                message.role,
                text,
                [[c["id"], c["name"], _canon_args(c["input"])] for c in calls],
                message.tool_call_id or "",
            )
        )
        if message.role in ("system", "developer"):
            systems.append(text)
        elif i > last:  # the new turn
            if message.role == "tool":
                results.append(_result(str(message.tool_call_id), text))
            else:
                texts.append(text)
        elif turn.history is not None:
            if message.role == "assistant":
                turn.history.append({"role": "assistant", "content": _text_block(text) + calls})
            elif message.role == "tool":
                turn.history.append({"role": "user", "content": [_result(str(message.tool_call_id), text)]})
            else:
                turn.history.append({"role": "user", "content": _text_block(text)})
        if i == last:
            turn.extends_key = hasher.hexdigest()
    turn.system = "\n\n".join(s for s in systems if s.strip()) or None
    return _finish(turn, results, texts, f"messages[{len(messages) - 1}]")


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
        return ClientTurn(content=_text_block(input_), text=input_)
    last = max((i for i, item in enumerate(input_) if _answers(item)), default=-1)
    if continuing and last >= 0:
        raise InvalidParam(
            f"input[{last}]",
            "With previous_response_id, input holds the new turn only: user messages and "
            "function_call_output items (the earlier output is already part of the conversation).",
        )
    turn = ClientTurn(content=[], text="", history=[] if last >= 0 else None)
    systems: list[str] = []
    results: list[Block] = []
    texts: list[str] = []
    for i, item in enumerate(input_):
        param, kind = f"input[{i}]", _kind(item)
        blocks: list[Block]
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidParam(f"{param}.role", f"Unknown role '{role}'.")
            text = _parts_text(item.get("content"), f"{param}.content")
            if role in ("system", "developer"):
                systems.append(text)
                continue
            if i > last:
                texts.append(text)
                continue
            blocks, role = _text_block(text), str(role)
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _parts_text(output, f"{param}.output")
            if not isinstance(item.get("call_id"), str):
                raise InvalidParam(f"{param}.call_id", "A function_call_output needs the call_id it answers.")
            if i > last:
                results.append(_result(item["call_id"], text))
                continue
            blocks, role = [_result(item["call_id"], text)], "user"
        elif kind == "function_call":
            blocks, role = (
                [
                    _tool_use(
                        str(item.get("call_id")),
                        str(item.get("name")),
                        str(item.get("arguments") or ""),
                        f"{param}.arguments",
                    )
                ],
                "assistant",
            )
        elif kind == "mcp_call":  # one of ours, sent back: the call and its result
            call_id = str(item.get("id", "")).removeprefix("mcp_")
            use = _tool_use(call_id, str(item.get("name")), str(item.get("arguments") or ""), f"{param}.arguments")
            error = item.get("error")
            output = str(item.get("output") or (error.get("content") if isinstance(error, dict) else error) or "")
            assert turn.history is not None
            turn.history.append({"role": "assistant", "content": [use]})
            turn.history.append({"role": "user", "content": [_result(call_id, output)]})
            continue
        elif kind == "reasoning":
            continue
        else:
            raise InvalidParam(f"{param}.type", f"Input items of type '{kind}' are not supported here.")
        assert turn.history is not None
        turn.history.append({"role": role, "content": blocks})
    turn.system = "\n\n".join(s for s in systems if s.strip()) or None
    return _finish(turn, results, texts, "input")
