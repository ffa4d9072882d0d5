"""Chat Completions' wire format: a finished turn as a `chat.completion`, a run as `chat.completion.chunk`s.

A streamed call is a run like any other (its events in the run log, cancellable from any replica);
its events are the chunks themselves, and the stream writes each one's JSON as a bare `data:` line
(Chat Completions has no event names and no ids), then `data: [DONE]`.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse, Response

from app.agent.loop import ToolResultEvent
from app.core.errors import AppError
from app.llm.base import Block, TextDelta, ToolCall, Usage
from app.openai.errors import error_body, error_response, openai_error
from app.openai.history import client_calls
from app.runs.events import RunEvent
from app.runs.manager import Run
from app.turns.answer import TurnJSONResponse
from app.turns.turn import Turn, TurnEnded, TurnEvent, TurnFailed

DONE = b"data: [DONE]\n\n"
_FINISH = {"max_tokens": "length", "max_steps": "length", "refusal": "content_filter"}


def completion_id(turn: Turn) -> str:
    return f"chatcmpl-{turn.started.message_id.hex}"


def finish_reason(turn: Turn) -> str:
    return "tool_calls" if turn.awaiting else _FINISH.get(turn.stop_reason or "", "stop")


def usage(used: Usage) -> dict[str, Any]:
    # OpenAI counts cached prompt tokens in prompt_tokens; Anthropic's input_tokens leaves them out.
    prompt = used.input_tokens + used.cache_read_input_tokens + used.cache_creation_input_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": used.output_tokens,
        "total_tokens": prompt + used.output_tokens,
        "prompt_tokens_details": {"cached_tokens": used.cache_read_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def tool_call(block: Block) -> dict[str, Any]:
    arguments = json.dumps(block.get("input") or {}, ensure_ascii=False)
    return {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}


def completion(turn: Turn, model: str) -> dict[str, Any]:
    """The `chat.completion` of a finished turn (also what an Idempotency-Key replays)."""
    calls = [tool_call(b) for b in client_calls(turn)]
    message: dict[str, Any] = {"role": "assistant", "content": turn.text or (None if calls else ""), "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": completion_id(turn),
        "object": "chat.completion",
        "created": int(turn.started.created_at.timestamp()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(turn), "logprobs": None}],
        "usage": usage(turn.usage),
        "system_fingerprint": None,
    }


class CompletionJSONResponse(TurnJSONResponse):
    """The turn executes beside a watch on the client (as /chat's JSON does), then one `chat.completion`."""

    def __init__(self, turn: Turn, model: str) -> None:
        super().__init__(turn)
        self.model = model

    def answer(self, turn: Turn, error: AppError | None) -> Response:
        if error is not None:
            return error_response(error)
        return JSONResponse(completion(turn, self.model))


class ChatChunks:
    """Publishes a turn's events on its run as `chat.completion.chunk`s.

    Text deltas are content; a call of one of the client's tools is a `tool_calls` delta; our own
    tools run unseen here (their text around them is kept apart by a blank line, as the stored
    answer is). The last chunk has the finish reason; with include_usage a usage chunk follows.
    """

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model, self.include_usage = model, include_usage
        self.wrote_text = self.apart = False
        self.calls = 0

    def _chunk(self, turn: Turn, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": completion_id(turn),
            "object": "chat.completion.chunk",
            "created": int(turn.started.created_at.timestamp()),
            "model": self.model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def start(self, turn: Turn, run: Run) -> None:
        run.publish("chunk", self._chunk(turn, {"role": "assistant", "content": ""}))

    def event(self, turn: Turn, event: TurnEvent, run: Run) -> None:
        if isinstance(event, TextDelta):
            text = "\n\n" + event.text if self.apart and self.wrote_text else event.text
            self.apart, self.wrote_text = False, True
            run.publish("chunk", self._chunk(turn, {"content": text}))
        elif isinstance(event, ToolCall | ToolResultEvent):
            self.apart = True
            if isinstance(event, ToolCall) and event.name in {t["name"] for t in turn.started.request.tools}:
                call = {"index": self.calls, **tool_call({"id": event.id, "name": event.name, "input": event.input})}
                self.calls += 1
                run.publish("chunk", self._chunk(turn, {"tool_calls": [call]}))
        elif isinstance(event, TurnEnded):
            last = self._chunk(turn, {}, finish_reason(turn))
            if self.include_usage:
                run.publish("chunk", last)
                last = {**self._chunk(turn, {}), "choices": [], "usage": usage(event.usage)}
            run.publish("end", last)
        else:
            assert isinstance(event, TurnFailed)
            run.publish("error", error_body(event.error))

    def interrupted(self, turn: Turn, run: Run) -> None:
        run.publish("error", openai_error(409, "The completion was cancelled.", code="cancelled"))


def chunk_frames(events: list[RunEvent]) -> bytes:
    """A run of chunks on the wire: each event's JSON as a `data:` line; `[DONE]` after the last chunk."""
    body = b"".join(b"data: %s\n\n" % e.payload.encode() for e in events)
    return body + DONE if events[-1].event == "end" else body


def replay_chunks(stored: dict[str, Any], include_usage: bool) -> Response:
    """An Idempotency-Key retry of a streamed call: the stored completion as a short stream."""
    choice = stored["choices"][0]
    base = {k: stored[k] for k in ("id", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    message = choice["message"]
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": message.get("content") or ""}]
    if message.get("tool_calls"):
        deltas.append({"tool_calls": [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]})
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None, "logprobs": None}]} for d in deltas]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": stored["usage"]})
    body = b"".join(b"data: %s\n\n" % json.dumps(c, ensure_ascii=False).encode() for c in chunks) + DONE
    return Response(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
