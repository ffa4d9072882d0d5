"""ASGI responses for a turn.

JSON: the turn runs beside a watch on the client's connection, in one task group owned by the
response; a disconnect cancels it, and what was produced is recorded however it ended.

SSE: the turn is a run owned by the app's RunManager; the response follows its events (and so
does `GET /runs/{id}/events`, from any replica). A disconnect cancels the run unless the client
asked for `on_disconnect: "continue"`.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response
from starlette.types import Message, Receive, Scope, Send

from app.agent.loop import ToolResultEvent
from app.chat.schemas import AssistantMessageOut, ChatResponse
from app.chat.turn import End, Failed, TurnEvent, TurnRun
from app.conversations.render import tool_calls
from app.conversations.schemas import UsageOut
from app.core.errors import DatabaseUnavailable, envelope
from app.llm.base import TextDelta, ToolCall
from app.runs.events import PING, RunEvent
from app.runs.manager import Run, RunManager
from app.runs.store import RunStore

log = structlog.get_logger(__name__)

NOT_SAVED = DatabaseUnavailable("The answer was produced but could not be saved; please retry.")

SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx: do not buffer the stream
}


def usage_out(run: TurnRun) -> UsageOut:
    u = run.usage
    return UsageOut(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_input_tokens=u.cache_read_input_tokens,
        cache_creation_input_tokens=u.cache_creation_input_tokens,
    )


def chat_response(run: TurnRun) -> dict[str, Any]:
    """The JSON body of a finished turn (also what an Idempotency-Key replays)."""
    started = run.started
    body = ChatResponse(
        conversation_id=started.conversation_id,
        model=started.model,
        stop_reason=run.stop_reason,
        message=AssistantMessageOut(
            id=started.message_id,
            content=run.answer,
            status=run.status,
            created_at=started.created_at,
            tool_calls=tool_calls(run.transcript.content()),
        ),
        usage=usage_out(run),
    )
    return body.model_dump(mode="json")


class DisconnectWatch:
    """Cancels a task group when the client goes away, and remembers that it did."""

    def __init__(self, receive: Receive, group: TaskGroup, on_leave: Callable[[], None] | None = None) -> None:
        self.receive, self.group, self.on_leave = receive, group, on_leave
        self.client_left = False

    async def run(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_left = True
                if self.on_leave is not None:
                    self.on_leave()
                self.group.cancel_scope.cancel()
                return


class TurnJSONResponse(Response):
    """Answers once the turn is over: 200 with the message, or the mapped error status."""

    def __init__(self, run: TurnRun) -> None:
        super().__init__()
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def ignore(_: TurnEvent) -> None:
            return None

        async with self.run.holding_lock():
            try:
                async with anyio.create_task_group() as group:
                    watch = DisconnectWatch(receive, group)
                    group.start_soon(watch.run)
                    await self.run.run(ignore)
                    group.cancel_scope.cancel()
            finally:
                await self.run.record()
        if watch.client_left:
            return  # the client has gone; there is no one to answer
        error = self.run.error if self.run.saved else self.run.error or NOT_SAVED
        if error is not None:
            answer = JSONResponse(envelope(error.type, error.message), error.status_code, error.headers)
        else:
            answer = JSONResponse(chat_response(self.run))
        await answer(scope, receive, send)


def turn_event(item: TurnEvent, run: TurnRun) -> tuple[str, dict[str, Any]]:
    """A turn's event as a run event: (name, data)."""
    if isinstance(item, TextDelta):
        return "delta", {"text": item.text}
    if isinstance(item, ToolCall):
        return "tool_use", {"id": item.id, "name": item.name, "input": item.input}
    if isinstance(item, ToolResultEvent):
        return "tool_result", {"tool_use_id": item.tool_use_id, "content": item.content, "is_error": item.is_error}
    if isinstance(item, End):
        usage = usage_out(run).model_dump()
        return "end", {"message_id": str(run.started.message_id), "stop_reason": item.stop_reason, "usage": usage}
    assert isinstance(item, Failed)
    return "error", envelope(item.error.type, item.error.message)


def turn_driver(turn: TurnRun) -> Callable[[Run], Awaitable[None]]:
    """What a run does: the turn, its events published, its outcome recorded before the last event."""

    async def drive(run: Run) -> None:
        started = turn.started
        run.publish(
            "start",
            {
                "conversation_id": str(started.conversation_id),
                "message_id": str(started.message_id),
                "run_id": str(run.id),
                "model": started.model,
            },
        )

        async def emit(item: TurnEvent) -> None:
            # Stored before anyone hears "end", so a client's next turn sees this one; and an
            # answer that could not be stored is not announced as complete.
            if isinstance(item, End | Failed) and not await turn.record() and isinstance(item, End):
                item = Failed(NOT_SAVED)
            run.publish(*turn_event(item, turn))

        async with turn.holding_lock():
            try:
                with run.scope:
                    await turn.run(emit)
            finally:
                await turn.record()

    return drive


async def _start_sse(send: Send) -> None:
    headers = [(b"content-type", b"text/event-stream; charset=utf-8")]
    headers += [(k.encode(), v.encode()) for k, v in SSE_HEADERS.items()]
    await send({"type": "http.response.start", "status": 200, "headers": headers})


async def _body(send: Send, chunk: bytes, more: bool = True) -> None:
    message: Message = {"type": "http.response.body", "body": chunk, "more_body": more}
    await send(message)


class RunStreamResponse(Response):
    """Follows a run of this process: replays what came after `after`, then streams it live."""

    def __init__(
        self, run: Run, manager: RunManager, *, ping_seconds: float, after: int = 0, cancel_on_disconnect: bool = True
    ) -> None:
        super().__init__()
        self.target, self.manager = run, manager
        self.ping_seconds, self.after, self.cancel_on_disconnect = ping_seconds, after, cancel_on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self.target

        def left() -> None:
            if self.cancel_on_disconnect:
                run.cancel("client_disconnected")

        async with anyio.create_task_group() as group:
            group.start_soon(DisconnectWatch(receive, group, left).run)
            await _start_sse(send)
            index = self.after
            while True:
                await run.wait_beyond(index, self.ping_seconds)
                if index < len(run.events):
                    fresh = run.events[index:]
                    index += len(fresh)
                    await _body(send, b"".join(e.sse() for e in fresh))
                    if fresh[-1].terminal:
                        break
                elif run.finished:
                    break
                else:
                    await _body(send, PING)
            await _body(send, b"", more=False)
            group.cancel_scope.cancel()


class StoredRunStreamResponse(Response):
    """Follows a run of another replica through its Redis event log."""

    def __init__(self, store: RunStore, run_id: uuid.UUID, *, ping_seconds: float, after: int) -> None:
        super().__init__()
        self.store, self.run_id, self.ping_seconds, self.after = store, run_id, ping_seconds, after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(DisconnectWatch(receive, group).run)
            await _start_sse(send)
            last = self.after
            block_ms = int(min(self.ping_seconds, 5.0) * 1000)
            idle = 0.0
            while True:
                try:
                    events: list[RunEvent] = await self.store.read(self.run_id, last, block_ms)
                except (RedisError, OSError) as exc:
                    log.warning("run.follow_failed", run_id=str(self.run_id), error=type(exc).__name__)
                    failure = RunEvent(
                        last + 1, "error", envelope("unavailable", "The run's event log is unavailable.")
                    )
                    await _body(send, failure.sse())
                    break
                if events:
                    idle = 0.0
                    last = events[-1].seq
                    await _body(send, b"".join(e.sse() for e in events))
                    if events[-1].terminal:
                        break
                    continue
                idle += block_ms / 1000
                owner = await self.store.owner(self.run_id)
                if owner is None or (owner[1] == "finished" and not await self.store.read(self.run_id, last, 0)):
                    break  # expired, or finished with nothing more to say
                if idle >= self.ping_seconds:
                    idle = 0.0
                    await _body(send, PING)
            await _body(send, b"", more=False)
            group.cancel_scope.cancel()


class ReplayResponse(Response):
    """An Idempotency-Key replay of a streamed turn: the stored answer as one short stream."""

    def __init__(self, stored: dict[str, Any]) -> None:
        super().__init__()
        self.stored = stored

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer, message = self.stored, self.stored["message"]
        events = [
            RunEvent(
                1,
                "start",
                {
                    "conversation_id": answer["conversation_id"],
                    "message_id": message["id"],
                    "model": answer["model"],
                    "replayed": True,
                },
            ),
            RunEvent(2, "delta", {"text": message["content"]}),
            RunEvent(
                3, "end", {"message_id": message["id"], "stop_reason": answer["stop_reason"], "usage": answer["usage"]}
            ),
        ]
        await _start_sse(send)
        await _body(send, b"".join(e.sse() for e in events), more=False)
