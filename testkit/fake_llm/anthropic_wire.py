"""Anthropic Messages API shapes: JSON message, SSE event sequence, usage, error body, tool results."""

from __future__ import annotations

import math
from typing import Any, cast

from testkit.fake_llm.answers import Answer
from testkit.fake_llm.content import (
    JSONDict,
    _blocks,
    _count_words,
    _has_cache_control,
    _new_id,
    _split_json,
    _split_pieces,
)
from testkit.fake_llm.context_management import Managed
from testkit.fake_llm.directives import Directives
from testkit.fake_llm.responses import Abort, Pause, Step, _cut_after_deltas, _sse

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


def anthropic_message(answer: Answer, model: str, usage: JSONDict, managed: Managed | None = None) -> JSONDict:
    """The JSON message; `managed`: what context management did (a compaction block first, applied_edits)."""
    message = {
        "id": _new_id("msg_fake_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _anthropic_blocks(answer),
        "stop_reason": answer.stop_reason,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": answer.output_tokens},
    }
    if managed is not None:
        if managed.compaction is not None:
            message["content"] = [dict(managed.compaction), *cast("list[Any]", message["content"])]
        if (context := managed.context_management()) is not None:
            message["context_management"] = context
    return message


def anthropic_stream(
    answer: Answer, model: str, usage: JSONDict, directives: Directives, managed: Managed | None = None
) -> list[Step]:
    """The SSE event sequence of the real API for ``answer``, with directive effects applied. A
    compaction block streams first: its start, one ``compaction_delta`` with the whole summary, its
    stop; ``applied_edits`` and the usage iterations come in the ``message_delta``."""
    start = anthropic_message(answer, model, usage)
    start.update(
        content=[], stop_reason=None, usage={k: v for k, v in usage.items() if k != "iterations"} | {"output_tokens": 1}
    )
    steps: list[Step] = [_sse("message_start", {"type": "message_start", "message": start})]
    if directives.hang:
        return [*steps, Pause(math.inf)]

    delta_positions: list[int] = []
    blocks = _anthropic_blocks(answer)
    if managed is not None and managed.compaction is not None:
        blocks = [managed.compaction, *blocks]
    if not blocks:
        steps.append(_sse("ping", {"type": "ping"}))
    for index, block in enumerate(blocks):
        if block["type"] == "compaction":
            opening: JSONDict = {"type": "compaction", "content": None}
            deltas = [{"type": "compaction_delta", **{k: v for k, v in block.items() if k != "type"}}]
        elif block["type"] == "text":
            opening = {"type": "text", "text": ""}
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
            if block["type"] != "compaction":
                delta_positions.append(len(steps))
            steps.append(_sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        steps.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    final: JSONDict = {
        "type": "message_delta",
        "delta": {"stop_reason": answer.stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": answer.output_tokens},
    }
    if managed is not None:
        if "iterations" in usage:
            final["usage"]["iterations"] = usage["iterations"]
        if (context := managed.context_management()) is not None:
            final["context_management"] = context
    steps.append(_sse("message_delta", final))
    steps.append(_sse("message_stop", {"type": "message_stop"}))

    if directives.midstream_error:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return _cut_after_deltas(steps, delta_positions, [_sse("error", error)])
    if directives.drop:
        return _cut_after_deltas(steps, delta_positions, [Abort()])
    return steps
