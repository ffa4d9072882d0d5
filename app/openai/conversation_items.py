"""OpenAI's conversation objects and items, built from agentchat's conversations and their rows.

A `/v1` conversation is an agentchat conversation: `conv_<its UUID in hex>` (a bare UUID is taken
too, so an id from `/chat` or `GET /conversations` works here). Its items are derived from its
message rows, with the ids the Responses door already gives them (app/openai/response_objects.py):
a user row is its `function_call_output` items (`fco_<call id>`), then one `message` of its text
(`msg_<row hex>`); an assistant row is its texts (`msg_<row hex>_<n>`), our tool calls with their
results (`mcp_<call id>`) and calls of the client's functions (`fc_<call id>`). Each item knows which
blocks of which row it is, so it can be fetched or deleted; an added item is a row of its own.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.llm.base import Block
from app.openai.errors import InvalidParam
from app.openai.response_objects import function_item, mcp_item, message_item, result_text

Row = tuple[str, list[Block]]  # (role, blocks): a message row to store
MAX_ITEMS = 20  # per request, as OpenAI
TEXT_PARTS = frozenset({"text", "input_text", "output_text"})
# What the providers accept as a call's id and a function's name.
_CALL_ID = re.compile(r"^[a-zA-Z0-9_-]{1,256}$")
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def conversation_id(value: uuid.UUID) -> str:
    return f"conv_{value.hex}"


def parse_conversation_id(value: str) -> uuid.UUID | None:
    """`conv_<hex>`, or a conversation's UUID as the other doors show it; None for anything else."""
    raw = value[5:] if value.startswith("conv_") else value
    if len(raw) not in (32, 36):
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


def conversation_object(id_: uuid.UUID, created_at: datetime, attributes: dict[str, Any] | None) -> dict[str, Any]:
    metadata = (attributes or {}).get("metadata") or {}
    return {
        "id": conversation_id(id_),
        "object": "conversation",
        "created_at": int(created_at.timestamp()),
        "metadata": metadata,
    }


# --- rows → items -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRow:
    id: uuid.UUID
    role: str
    content: list[Block]
    status: str


@dataclass(frozen=True, slots=True)
class Located:
    """An item, and the blocks of its row that it is made of."""

    item: dict[str, Any]
    row: StoredRow
    blocks: tuple[int, ...]


def _user_items(row: StoredRow) -> list[Located]:
    found = [
        Located(
            {
                "id": f"fco_{b['tool_use_id']}",
                "type": "function_call_output",
                "call_id": b["tool_use_id"],
                "output": result_text(b.get("content")),
                "status": "completed",
            },
            row,
            (i,),
        )
        for i, b in enumerate(row.content)
        if b.get("type") == "tool_result"
    ]
    texts = [(i, b["text"]) for i, b in enumerate(row.content) if b.get("type") == "text" and b.get("text")]
    if texts:
        parts = [{"type": "input_text", "text": text} for _, text in texts]
        message = {"id": f"msg_{row.id.hex}", "type": "message", "role": "user", "status": "completed"}
        found.append(Located({**message, "content": parts}, row, tuple(i for i, _ in texts)))
    return found


def _assistant_items(row: StoredRow) -> list[Located]:
    results = {b["tool_use_id"]: i for i, b in enumerate(row.content) if b.get("type") == "tool_result"}
    found, texts = [], 0
    for i, block in enumerate(row.content):
        if block.get("type") == "text" and block.get("text"):
            found.append(Located(message_item(f"msg_{row.id.hex}_{texts}", block["text"]), row, (i,)))
            texts += 1
        elif block.get("type") == "tool_use":
            at = results.get(block["id"])
            if at is None:
                found.append(Located(function_item(block), row, (i,)))
            else:
                found.append(Located(mcp_item(block, row.content[at]), row, (i, at)))
    return found


def items_of(rows: list[StoredRow]) -> list[Located]:
    """A conversation's items, oldest first."""
    return [located for row in rows for located in (_user_items(row) if row.role == "user" else _assistant_items(row))]


# --- items → rows -------------------------------------------------------------------------------


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidParam(param, "Content is a string or a list of text parts.")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise InvalidParam(f"{param}[{j}].type", f"Content of type '{kind}' is not supported: text only.")
    return "\n".join(texts)


def _call(item: dict[str, Any], param: str, call_id: Any) -> Block:
    if not isinstance(call_id, str) or not _CALL_ID.match(call_id):
        raise InvalidParam(f"{param}.call_id", "A call id is 1-256 letters, digits, '_' or '-'.")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidParam(f"{param}.name", "A function name is 1-64 letters, digits, '_' or '-'.")
    arguments = item.get("arguments") or ""
    try:
        data = json.loads(arguments) if isinstance(arguments, str) and arguments.strip() else {}
    except ValueError:
        raise InvalidParam(f"{param}.arguments", "The arguments are not valid JSON.") from None
    return {"type": "tool_use", "id": call_id, "name": name, "input": data if isinstance(data, dict) else {}}


def rows_of(items: list[dict[str, Any]], *, opening: bool) -> tuple[list[Row], list[str]]:
    """Items a client adds, as rows (one per item, in order), and the system and developer messages
    among them: the conversation's instructions when it is `opening`, else a 400."""
    rows: list[Row] = []
    systems: list[str] = []
    for i, item in enumerate(items):
        param = f"items[{i}]"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            text = _text(item.get("content"), f"{param}.content")
            if role in ("system", "developer"):
                if not opening:
                    raise InvalidParam(
                        f"{param}.role",
                        "System and developer messages set a conversation's instructions when it is created; "
                        "later, use `instructions` on a response.",
                    )
                systems.append(text)
            elif role in ("user", "assistant"):
                if not text.strip():
                    raise InvalidParam(f"{param}.content", "A message needs text.")
                rows.append((role, [{"type": "text", "text": text}]))
            else:
                raise InvalidParam(f"{param}.role", f"Unknown role '{role}'.")
        elif kind == "function_call":
            rows.append(("assistant", [_call(item, param, item.get("call_id"))]))
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or not _CALL_ID.match(call_id):
                raise InvalidParam(f"{param}.call_id", "A function_call_output needs the call_id it answers.")
            text = output if isinstance(output, str) else _text(output, f"{param}.output")
            rows.append(("user", [{"type": "tool_result", "tool_use_id": call_id, "content": text}]))
        elif kind == "mcp_call":  # one of ours, added back: the call and its result
            use = _call(item, param, str(item.get("id") or "").removeprefix("mcp_"))
            error = item.get("error")
            output = item.get("output") or (error.get("content") if isinstance(error, dict) else error) or ""
            result = {"type": "tool_result", "tool_use_id": use["id"], "content": str(output)}
            rows.append(("assistant", [use, result | ({"is_error": True} if error else {})]))
        elif kind == "reasoning":
            continue  # not kept, as the Responses door does not keep it either
        else:
            raise InvalidParam(f"{param}.type", f"Items of type '{kind}' are not supported here.")
    return rows, systems
