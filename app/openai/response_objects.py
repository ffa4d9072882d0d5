"""The Responses API's objects, built from what a turn stores: a response is one turn's answer.

Ids are derived, never stored: a response is `resp_<assistant message id>`; its output items are
`msg_<message id>_<n>` (the n-th text of the answer), `mcp_<tool_use id>` (a tool we ran: an
`mcp_call` with its output, which the SDKs parse and a client can show), `fc_<tool_use id>` (a
call of the client's own function, with `call_id` = the tool_use id) and `mcpr_<tool_use id>` (a
call of a gated tool waiting for the client's `mcp_approval_response`). Stored blocks and a live
stream give the same items with the same ids.

An answer that paused for approval and was continued is one message and several responses, as
OpenAI has it: the paused response `resp_<id>` ends `completed` with its approval requests, and
each continuation is a new response, `resp_<id>_<k>` (k = 1, 2…: it may pause again), whose input
is the approval responses and whose output is what came after them. Where each continuation begins
is kept in the answer's `attributes.resumptions` (app/turns/approvals.py).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.llm.base import Block, Usage

SERVER_LABEL = "agentchat"
_ERROR_CODES = {"upstream_rate_limited": "rate_limit_exceeded", "token_quota_exceeded": "rate_limit_exceeded"}


def response_id(message_id: uuid.UUID, segment: int = 0) -> str:
    return f"resp_{message_id.hex}_{segment}" if segment else f"resp_{message_id.hex}"


def parse_segment(value: str) -> tuple[uuid.UUID, int] | None:
    """`resp_<hex>` → (message id, 0); `resp_<hex>_<k>` → (message id, k), its k-th continuation."""
    head, sep, tail = value.partition("_")[2].partition("_")
    if not value.startswith("resp_") or len(head) != 32:
        return None
    # One spelling per response: no `_`, `_0` or leading zeros for the first one's id.
    if sep and not (tail.isascii() and tail.isdigit() and len(tail) < 6 and tail[0] != "0"):
        return None
    try:
        return uuid.UUID(hex=head), int(tail or 0)
    except ValueError:
        return None


def parse_response_id(value: str) -> uuid.UUID | None:
    found = parse_segment(value)
    return found[0] if found is not None else None


def approval_request_id(tool_use_id: str) -> str:
    return f"mcpr_{tool_use_id}"


def server_and_tool(name: str) -> tuple[str, str]:
    """An MCP tool's `<server>__<tool>` name as (server label, its name there); a built-in's as ours."""
    server, sep, tool = name.partition("__")
    return (server, tool) if sep and server and tool else (SERVER_LABEL, name)


def approval_item(call: Block) -> dict[str, Any]:
    server, name = server_and_tool(call["name"])
    return {
        "id": approval_request_id(call["id"]),
        "type": "mcp_approval_request",
        "server_label": server,
        "name": name,
        "arguments": json.dumps(call.get("input") or {}, ensure_ascii=False),
    }


def result_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return str(content or "")


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": [part]}


def mcp_item(call: Block, result: Block | None = None, *, approved: bool = False) -> dict[str, Any]:
    """A call of one of our tools; `approved`: one a person decided (it names the approval request)."""
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
    if approved:
        item["approval_request_id"] = approval_request_id(call["id"])
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


def output_items(
    blocks: list[Block], message_id: uuid.UUID, *, start: int = 0, end: int | None = None, paused: bool = False
) -> list[dict[str, Any]]:
    """An answer's blocks as output items. A tool_use with its result in the answer is one of ours
    (an mcp_call); one without is a call of the client's function that ended the turn, or, in a
    response that `paused`, a call waiting for approval.

    blocks[start:end] only: one response of an answer continued after approvals (its results of
    calls decided before `start` are those calls, approved or denied, as mcp_call items)."""
    end = len(blocks) if end is None else end
    results = {b["tool_use_id"]: b for b in blocks[:end] if b.get("type") == "tool_result"}
    calls = {b["id"]: b for b in blocks[:start] if b.get("type") == "tool_use"}
    items, texts = [], 0
    for index, block in enumerate(blocks[:end]):
        if block.get("type") == "text" and block.get("text"):
            if index >= start:
                items.append(message_item(f"msg_{message_id.hex}_{texts}", block["text"]))
            texts += 1
        elif index < start:
            continue
        elif block.get("type") == "tool_use":
            result = results.get(block["id"])
            if result is not None:
                items.append(mcp_item(block, result))
            else:
                items.append(approval_item(block) if paused else function_item(block))
        elif block.get("type") == "tool_result" and block.get("tool_use_id") in calls:
            items.append(mcp_item(calls[block["tool_use_id"]], block, approved=True))
    return items


def texts_before(blocks: list[Block], start: int) -> int:
    """How many texts the answer had before `start` (a continuation numbers its texts on from there)."""
    return sum(1 for b in blocks[:start] if b.get("type") == "text" and b.get("text"))


@dataclass(frozen=True, slots=True)
class Segment:
    """One response of an answer: blocks[start:end], with its own time, usage and request attributes."""

    number: int
    start: int
    end: int | None  # None: to the end (the last response, the answer's own status)
    created_at: datetime
    used: Usage
    attributes: dict[str, Any]


def segment_of(
    attributes: dict[str, Any], number: int, created_at: datetime, used: Usage, message_id: uuid.UUID
) -> Segment | None:
    """The `number`-th response of a stored answer (0: the first), or None if it has no such one."""
    resumptions: list[dict[str, Any]] = attributes.get("resumptions") or []
    if number > len(resumptions):
        return None
    marks = [0, *(r["at"] for r in resumptions)]
    totals = [*(Usage(*r["usage"]) for r in resumptions), used]  # the usage where each response ends
    begun = totals[number - 1] if number else Usage()
    ended = totals[number]
    delta = Usage(*(a - b for a, b in zip(_usage_tuple(ended), _usage_tuple(begun), strict=True)))
    if number == 0:
        own = attributes
    else:
        resumed = resumptions[number - 1]
        created_at = datetime.fromtimestamp(resumed["created_at"], UTC)
        # Its own request's attributes (the Responses door), or the first's, continued from the one before.
        own = resumed.get("response") or {**attributes, "previous_response_id": response_id(message_id, number - 1)}
    end = marks[number + 1] if number + 1 < len(marks) else None
    return Segment(number, marks[number], end, created_at, delta, own)


def _usage_tuple(used: Usage) -> tuple[int, int, int, int]:
    return (
        used.input_tokens,
        used.output_tokens,
        used.cache_read_input_tokens,
        used.cache_creation_input_tokens,
    )


def outcome(status: str, stop_reason: str | None, error: dict[str, Any] | None) -> dict[str, Any]:
    """A stored message's status as the response's `status`, `incomplete_details` and `error`."""
    details: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    if status == "awaiting_approval":
        status = "completed"  # as OpenAI ends a response with mcp_approval_request items
    elif status == "complete" and stop_reason in ("max_tokens", "max_steps"):
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
    segment: int = 0,
) -> dict[str, Any]:
    """A `response`; `attributes` are the request fields stored with the answer (see the router);
    `segment`: which of the answer's responses (its continuations after approvals)."""
    return {
        "id": response_id(message_id, segment),
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
