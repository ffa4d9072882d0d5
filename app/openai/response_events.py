"""A turn as the Responses API's stream, published on its run as it is.

Each event is a run event named by its `type`, with `sequence_number` = its place in the run
(0-based: the run event's id minus one), so the run log *is* the stream: following a run, on any
replica, after `starting_after=N` (run events after N + 1) replays it exactly. Order:
response.created, response.in_progress; per text: output_item.added, content_part.added,
output_text.delta…, output_text.done, content_part.done, output_item.done; per tool of ours an
mcp_call item (added, mcp_call.in_progress, mcp_call.completed | failed, done); per call of the
client's function a function_call item (added, arguments delta and done, done); per call of a
gated tool an mcp_approval_request item (added, done), the response then ending completed; then
response.completed, response.incomplete (length, client gone, cancelled) or response.failed. A
continuation after approvals is its own response (`resp_<id>_<k>`), its decided calls first.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.responses import JSONResponse, Response

from app.agent.history import INTERRUPTED
from app.agent.loop import ToolResultEvent
from app.core.errors import AppError
from app.llm.base import Block, TextDelta, ToolCall, Usage
from app.models.conversations import MessageStatus
from app.openai.errors import error_response
from app.openai.response_objects import (
    approval_item,
    function_item,
    mcp_item,
    message_item,
    outcome,
    output_items,
    response_object,
    texts_before,
)
from app.runs.events import RunEvent
from app.turns.answer import TurnJSONResponse
from app.turns.turn import ApprovalRequired, Turn, TurnEnded, TurnEvent, TurnFailed

IN_PROGRESS = {"status": "in_progress", "incomplete_details": None, "error": None}
_TERMINAL = {"completed": "response.completed", "failed": "response.failed"}


class Sink(Protocol):
    """Where events go: a run, or a list (a replay)."""

    events: list[RunEvent]

    def publish(self, event: str, data: dict[str, Any]) -> RunEvent: ...


def emit(sink: Sink, type_: str, **fields: Any) -> None:
    sink.publish(type_, {"type": type_, "sequence_number": len(sink.events), **fields})


def open_message(sink: Sink, index: int, item_id: str) -> None:
    item = {**message_item(item_id, "", "in_progress"), "content": []}
    emit(sink, "response.output_item.added", output_index=index, item=item)
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    emit(sink, "response.content_part.added", item_id=item_id, output_index=index, content_index=0, part=part)


def text_delta(sink: Sink, index: int, item_id: str, delta: str) -> None:
    where = {"item_id": item_id, "output_index": index, "content_index": 0}
    emit(sink, "response.output_text.delta", **where, delta=delta, logprobs=[])


def close_message(sink: Sink, index: int, item: dict[str, Any]) -> None:
    part, where = item["content"][0], {"item_id": item["id"], "output_index": index, "content_index": 0}
    emit(sink, "response.output_text.done", **where, text=part["text"], logprobs=[])
    emit(sink, "response.content_part.done", **where, part=part)
    emit(sink, "response.output_item.done", output_index=index, item=item)


def function_events(sink: Sink, index: int, item: dict[str, Any]) -> None:
    begun = {**item, "arguments": "", "status": "in_progress"}
    emit(sink, "response.output_item.added", output_index=index, item=begun)
    where = {"item_id": item["id"], "output_index": index}
    emit(sink, "response.function_call_arguments.delta", **where, delta=item["arguments"])
    emit(sink, "response.function_call_arguments.done", **where, name=item["name"], arguments=item["arguments"])
    emit(sink, "response.output_item.done", output_index=index, item=item)


def mcp_open(sink: Sink, index: int, item: dict[str, Any]) -> None:
    emit(sink, "response.output_item.added", output_index=index, item=item)
    emit(sink, "response.mcp_call.in_progress", item_id=item["id"], output_index=index)


def mcp_close(sink: Sink, index: int, item: dict[str, Any]) -> None:
    kind = "response.mcp_call.failed" if item["status"] == "failed" else "response.mcp_call.completed"
    emit(sink, kind, item_id=item["id"], output_index=index)
    emit(sink, "response.output_item.done", output_index=index, item=item)


def approval_events(sink: Sink, index: int, item: dict[str, Any]) -> None:
    emit(sink, "response.output_item.added", output_index=index, item=item)
    emit(sink, "response.output_item.done", output_index=index, item=item)


def finish(sink: Sink, response: dict[str, Any]) -> None:
    emit(sink, _TERMINAL.get(response["status"], "response.incomplete"), response=response)


def response_of(turn: Turn, attributes: dict[str, Any], error: AppError | None = None) -> dict[str, Any]:
    """The `response` of a finished turn (also what an Idempotency-Key replays); of a continued
    one, the continuation's own response: what came after the decisions."""
    failure = {"type": error.type, "message": error.message} if error is not None else None
    started, resumed = turn.started, turn.resume
    paused = turn.status == MessageStatus.AWAITING_APPROVAL
    blocks, used = turn.transcript.content(), turn.usage
    if resumed is not None:
        used = _since(used, resumed.before)
    return response_object(
        started.message_id,
        resumed.created_at or started.created_at if resumed is not None else started.created_at,
        attributes,
        state=outcome(turn.status.value, turn.stop_reason, failure),
        output=output_items(blocks, started.message_id, start=resumed.at if resumed else 0, paused=paused),
        used=used,
        segment=resumed.segment if resumed is not None else 0,
    )


def _since(total: Usage, before: Usage) -> Usage:
    return Usage(
        total.input_tokens - before.input_tokens,
        total.output_tokens - before.output_tokens,
        total.cache_read_input_tokens - before.cache_read_input_tokens,
        total.cache_creation_input_tokens - before.cache_creation_input_tokens,
    )


class ResponseJSONResponse(TurnJSONResponse):
    """A response that is neither streamed nor in the background: the finished `response`, or an error."""

    def __init__(self, turn: Turn, attributes: dict[str, Any]) -> None:
        super().__init__(turn)
        self.attributes = attributes

    def answer(self, turn: Turn, error: AppError | None) -> Response:
        if error is not None:
            return error_response(error)
        return JSONResponse(response_of(turn, self.attributes))


class ResponseEvents:
    """Publishes a turn's events on its run in the Responses stream's shape (one instance per turn)."""

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.attributes = attributes
        self.items: list[dict[str, Any]] = []
        self.open: int | None = None  # the output index of the text being streamed
        self.parts: list[str] = []
        self.texts = 0
        self.running: dict[str, tuple[int, Block]] = {}  # our tools' calls awaiting their results

    def _response(self, turn: Turn, state: dict[str, Any], used: Usage | None) -> dict[str, Any]:
        started, resumed = turn.started, turn.resume
        if resumed is None:
            return response_object(
                started.message_id, started.created_at, self.attributes, state=state, output=list(self.items), used=used
            )
        return response_object(
            started.message_id,
            resumed.created_at or started.created_at,
            self.attributes,
            state=state,
            output=list(self.items),
            used=_since(used, resumed.before) if used is not None else None,
            segment=resumed.segment,
        )

    def start(self, turn: Turn, run: Sink) -> None:
        if turn.resume is not None:  # a continuation numbers its texts on from the paused answer's
            self.texts = texts_before(turn.transcript.blocks, turn.resume.at)
        response = self._response(turn, IN_PROGRESS, None)
        emit(run, "response.created", response=response)
        emit(run, "response.in_progress", response=response)

    def event(self, turn: Turn, event: TurnEvent, run: Sink) -> None:
        if isinstance(event, TextDelta):
            if self.open is None:
                self.open, self.parts = len(self.items), []
                item_id = f"msg_{turn.started.message_id.hex}_{self.texts}"
                self.texts += 1
                self.items.append(message_item(item_id, ""))
                open_message(run, self.open, item_id)
            self.parts.append(event.text)
            text_delta(run, self.open, self.items[self.open]["id"], event.text)
        elif isinstance(event, ToolCall):
            self._close_text(run)
            call, index = {"id": event.id, "name": event.name, "input": event.input}, len(self.items)
            if event.name in {t["name"] for t in turn.started.request.tools}:
                self.items.append(function_item(call))
                function_events(run, index, self.items[index])
            elif turn.agent.gated_offered and turn.agent.tools.needs_approval(event.name):
                # Waits for the client's mcp_approval_response: the response will end here, completed.
                self.items.append(approval_item(call))
                approval_events(run, index, self.items[index])
            else:
                self.items.append(mcp_item(call))
                self.running[event.id] = (index, call)
                mcp_open(run, index, self.items[index])
        elif isinstance(event, ToolResultEvent):
            decided = {c["id"] for c in turn.resume.pending} if turn.resume is not None else set()
            if event.tool_use_id in decided:  # a call decided by the client: announced whole, now
                # The call as it ran: with the client's edited input, where it gave one.
                call = next(b for b in turn.transcript.blocks if b.get("id") == event.tool_use_id)
                index, result = len(self.items), {"content": event.content, "is_error": event.is_error}
                self.items.append(mcp_item(call, approved=True))
                mcp_open(run, index, self.items[index])
                self.items[index] = mcp_item(call, result, approved=True)
                mcp_close(run, index, self.items[index])
            else:
                self._tool_done(run, event.tool_use_id, event.content, event.is_error)
        elif isinstance(event, ApprovalRequired):
            pass  # announced with its call, as an mcp_approval_request item
        elif isinstance(event, TurnEnded):
            self._finish(turn, run, None, event.usage)
        else:
            assert isinstance(event, TurnFailed)
            self._finish(turn, run, {"type": event.error.type, "message": event.error.message}, turn.usage)

    def interrupted(self, turn: Turn, run: Sink) -> None:
        self._finish(turn, run, None, turn.usage)

    def _tool_done(self, run: Sink, tool_use_id: str, content: str, is_error: bool) -> None:
        found = self.running.pop(tool_use_id, None)
        if found is not None:
            index, call = found
            self.items[index] = mcp_item(call, {"content": content, "is_error": is_error})
            mcp_close(run, index, self.items[index])

    def _close_text(self, run: Sink) -> None:
        if self.open is not None:
            item = message_item(self.items[self.open]["id"], "".join(self.parts))
            self.items[self.open] = item
            close_message(run, self.open, item)
            self.open = None

    def _finish(self, turn: Turn, run: Sink, error: dict[str, Any] | None, used: Usage) -> None:
        self._close_text(run)
        for tool_use_id in list(self.running):
            self._tool_done(run, tool_use_id, INTERRUPTED, True)
        finish(run, self._response(turn, outcome(turn.status.value, turn.stop_reason, error), used))


class _Collected:
    """A sink that keeps the events: a stream built at once, from a stored response."""

    def __init__(self) -> None:
        self.events: list[RunEvent] = []

    def publish(self, event: str, data: dict[str, Any]) -> RunEvent:
        self.events.append(RunEvent(len(self.events) + 1, event, data))
        return self.events[-1]


def replayed(response: dict[str, Any], *, after: int = 0) -> Response:
    """A finished response as its stream (the events after run event `after`): an Idempotency-Key
    replay, or the stream of a response whose run's log has expired."""
    sink = _Collected()
    begun = {**response, **IN_PROGRESS, "output": [], "usage": None}
    emit(sink, "response.created", response=begun)
    emit(sink, "response.in_progress", response=begun)
    for index, item in enumerate(response["output"]):
        if item["type"] == "message":
            open_message(sink, index, item["id"])
            text_delta(sink, index, item["id"], item["content"][0]["text"])
            close_message(sink, index, item)
        elif item["type"] == "function_call":
            function_events(sink, index, item)
        elif item["type"] == "mcp_approval_request":
            approval_events(sink, index, item)
        elif item["type"] == "mcp_call":
            mcp_open(sink, index, {**item, "output": None, "error": None, "status": "in_progress"})
            mcp_close(sink, index, item)
    finish(sink, response)
    body = b"".join(e.frame for e in sink.events if e.seq > after)
    return Response(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
