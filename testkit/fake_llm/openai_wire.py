"""OpenAI Chat Completions shapes: JSON completion, SSE chunks, usage, error body, tool results."""

from __future__ import annotations

import json
import math
import time
from typing import Any

from testkit.fake_llm.answers import Answer, ToolCall
from testkit.fake_llm.content import JSONDict, _count_words, _has_cache_control, _new_id, _split_json, _split_pieces
from testkit.fake_llm.directives import Directives
from testkit.fake_llm.responses import Abort, Pause, Step, _cut_after_deltas, _sse_data

# (type, code) of the OpenAI error body, by HTTP status.
OPENAI_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "model_not_found"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("requests", "rate_limit_exceeded"),
}


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
