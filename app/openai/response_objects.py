"""The Responses API's objects, built from what a turn stores: a response is one turn's answer.

Ids are derived, never stored: a response is `resp_<assistant message id>`; its output items are
`msg_<message id>_<n>` (the n-th text of the answer), `mcp_<tool_use id>` (a tool we ran: an
`mcp_call` with its output, which the SDKs parse and a client can show) and `fc_<tool_use id>` (a
call of the client's own function, with `call_id` = the tool_use id). Stored blocks and a live
stream give the same items with the same ids.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from app.llm.base import Block, Usage

SERVER_LABEL = "agentchat"
_ERROR_CODES = {"upstream_rate_limited": "rate_limit_exceeded", "token_quota_exceeded": "rate_limit_exceeded"}


def response_id(message_id: uuid.UUID) -> str:
    return f"resp_{message_id.hex}"


def parse_response_id(value: str) -> uuid.UUID | None:
    if not value.startswith("resp_") or len(value) != 37:
        return None
    try:
        return uuid.UUID(hex=value[5:])
    except ValueError:
        return None


def result_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return str(content or "")


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": [part]}


def mcp_item(call: Block, result: Block | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": f"mcp_{call['id']}",
        "type": "mcp_call",
        "server_label": SERVER_LABEL,
        "name": call["name"],
        "arguments": json.dumps(call.get("input") or {}, ensure_ascii=False),
        "output": None,
        "error": None,
        "status": "in_progress",
    }
    if result is not None:
        text = result_text(result.get("content"))
        if result.get("is_error"):
            item |= {"error": {"type": "mcp_tool_execution_error", "content": text}, "status": "failed"}
        else:
            item |= {"output": text, "status": "completed"}
    return item


def function_item(call: Block) -> dict[str, Any]:
    return {
        "id": f"fc_{call['id']}",
        "type": "function_call",
        "call_id": call["id"],
        "name": call["name"],
        "arguments": json.dumps(call.get("input") or {}, ensure_ascii=False),
        "status": "completed",
    }


def output_items(blocks: list[Block], message_id: uuid.UUID) -> list[dict[str, Any]]:
    """An answer's blocks as output items. A tool_use with its result in the answer is one of ours
    (an mcp_call); one without is a call of the client's function that ended the turn."""
    results = {b["tool_use_id"]: b for b in blocks if b.get("type") == "tool_result"}
    items, texts = [], 0
    for block in blocks:
        if block.get("type") == "text" and block.get("text"):
            items.append(message_item(f"msg_{message_id.hex}_{texts}", block["text"]))
            texts += 1
        elif block.get("type") == "tool_use":
            result = results.get(block["id"])
            items.append(mcp_item(block, result) if result is not None else function_item(block))
    return items


def outcome(status: str, stop_reason: str | None, error: dict[str, Any] | None) -> dict[str, Any]:
    """A stored message's status as the response's `status`, `incomplete_details` and `error`."""
    details: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    if status == "complete" and stop_reason in ("max_tokens", "max_steps"):
        status, details = "incomplete", {"reason": "max_output_tokens" if stop_reason == "max_tokens" else "max_steps"}
    elif status == "complete":
        status = "completed"
    elif status == "incomplete":
        status = "cancelled" if stop_reason == "cancelled" else "incomplete"
        details = None if status == "cancelled" else {"reason": stop_reason or "interrupted"}
    elif status == "error":
        error = error or {}
        code = _ERROR_CODES.get(error.get("type", ""), "server_error")
        status, failure = "failed", {"code": code, "message": error.get("message", "")}
    return {"status": status, "incomplete_details": details, "error": failure}


def usage(used: Usage) -> dict[str, Any]:
    # OpenAI counts cached input in input_tokens; Anthropic's input_tokens leaves it out.
    prompt = used.input_tokens + used.cache_read_input_tokens + used.cache_creation_input_tokens
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": used.cache_read_input_tokens},
        "output_tokens": used.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + used.output_tokens,
    }


def response_object(
    message_id: uuid.UUID,
    created_at: datetime,
    attributes: dict[str, Any],
    *,
    state: dict[str, Any],
    output: list[dict[str, Any]],
    used: Usage | None,
) -> dict[str, Any]:
    """A `response`; `attributes` are the request fields stored with the answer (see the router)."""
    return {
        "id": response_id(message_id),
        "object": "response",
        "created_at": int(created_at.timestamp()),
        **state,
        "instructions": attributes.get("instructions"),
        "max_output_tokens": attributes.get("max_output_tokens"),
        "metadata": attributes.get("metadata") or {},
        "model": attributes.get("model") or SERVER_LABEL,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": attributes.get("previous_response_id"),
        "background": bool(attributes.get("background")),
        "conversation": attributes.get("conversation"),
        "store": attributes.get("store", True),
        "temperature": None,
        "text": {"format": {"type": "text"}},
        "tool_choice": attributes.get("tool_choice") or "auto",
        "tools": attributes.get("tools") or [],
        "top_p": None,
        "truncation": "disabled",
        "usage": usage(used) if used is not None else None,
        "user": attributes.get("user"),
    }


def input_items(user_id: uuid.UUID, blocks: list[Block]) -> list[dict[str, Any]]:
    """The user's side of a turn as input items: tool outputs, then its message."""
    items: list[dict[str, Any]] = [
        {
            "id": f"fco_{b['tool_use_id']}",
            "type": "function_call_output",
            "call_id": b["tool_use_id"],
            "output": result_text(b.get("content")),
            "status": "completed",
        }
        for b in blocks
        if b.get("type") == "tool_result"
    ]
    texts = [{"type": "input_text", "text": b["text"]} for b in blocks if b.get("type") == "text" and b.get("text")]
    if texts:
        items.append(
            {"id": f"msg_{user_id.hex}", "type": "message", "role": "user", "status": "completed", "content": texts}
        )
    return items
