"""ASGI responses that run a turn beside a watch on the client's connection.

Both modes own their work in one task group: the turn, a listener for `http.disconnect`, and
(for SSE) the writer. A disconnect cancels the group, which closes the upstream stream at once;
whatever the turn produced is recorded in `finally`, shielded, however the group ended.
"""

from __future__ import annotations

import json
import math
from typing import Any

import anyio
from anyio.abc import TaskGroup
from fastapi.encoders import jsonable_encoder
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.agent.loop import Delta, ToolResultEvent, ToolUseEvent
from app.chat.schemas import AssistantMessageOut, ChatResponse
from app.chat.turn import End, Failed, TurnEvent, TurnRun
from app.conversations.render import tool_calls
from app.conversations.schemas import UsageOut
from app.core.errors import envelope


def usage_out(run: TurnRun) -> UsageOut:
    u = run.usage
    return UsageOut(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_input_tokens=u.cache_read_input_tokens,
        cache_creation_input_tokens=u.cache_creation_input_tokens,
    )


class DisconnectWatch:
    """Cancels a task group when the client goes away, and remembers that it did."""

    def __init__(self, receive: Receive, group: TaskGroup) -> None:
        self.receive, self.group = receive, group
        self.client_left = False

    async def run(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.client_left = True
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
        await self._answer()(scope, receive, send)

    def _answer(self) -> Response:
        run = self.run
        if run.error is not None:
            return JSONResponse(envelope(run.error.type, run.error.message), run.error.status_code, run.error.headers)
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
        return JSONResponse(jsonable_encoder(body))


def sse_event(seq: int, event: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {seq}\nevent: {event}\ndata: {payload}\n\n".encode()


SSE_HEADERS = {
    "cache-control": "no-cache",
    "x-accel-buffering": "no",  # nginx: do not buffer the stream
    "connection": "keep-alive",
}


class TurnStreamResponse(Response):
    """`start` → `delta`… → `end`, or an `error` event; comment pings keep idle streams open."""

    media_type = "text/event-stream"

    def __init__(self, run: TurnRun, *, ping_seconds: float) -> None:
        super().__init__(media_type=self.media_type, headers=SSE_HEADERS)
        # The length is unknown: drop the content-length Response sets for an empty body.
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.run = run
        self.ping_seconds = ping_seconds
        self.seq = 0

    def _event(self, event: str, data: dict[str, Any]) -> bytes:
        self.seq += 1
        return sse_event(self.seq, event, data)

    def _encode(self, item: TurnEvent) -> bytes:
        run = self.run
        if isinstance(item, Delta):
            return self._event("delta", {"text": item.text})
        if isinstance(item, ToolUseEvent):
            return self._event("tool_use", {"id": item.id, "name": item.name, "input": item.input})
        if isinstance(item, ToolResultEvent):
            return self._event(
                "tool_result", {"tool_use_id": item.tool_use_id, "content": item.content, "is_error": item.is_error}
            )
        if isinstance(item, End):
            return self._event(
                "end",
                {
                    "message_id": str(run.started.message_id),
                    "stop_reason": item.stop_reason,
                    "usage": usage_out(run).model_dump(),
                },
            )
        assert isinstance(item, Failed)
        return self._event("error", envelope(item.error.type, item.error.message))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events_in, events_out = anyio.create_memory_object_stream[TurnEvent](math.inf)

        async def produce() -> None:
            async with events_in:
                await self.run.run(events_in.send)

        async def body(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(DisconnectWatch(receive, group).run)
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                started = self.run.started
                await body(
                    self._event(
                        "start",
                        {
                            "conversation_id": str(started.conversation_id),
                            "message_id": str(started.message_id),
                            "model": started.model,
                        },
                    )
                )
                group.start_soon(produce)
                async with events_out:
                    while True:
                        item: TurnEvent | None = None
                        with anyio.move_on_after(self.ping_seconds):
                            try:
                                item = await events_out.receive()
                            except anyio.EndOfStream:
                                break
                        if item is None:
                            await body(b": ping\n\n")
                            continue
                        if isinstance(item, End | Failed):
                            # Stored before the client hears "end", so its next turn sees this one.
                            await self.run.record()
                            await body(self._encode(item))
                            break
                        await body(self._encode(item))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                group.cancel_scope.cancel()
        finally:
            await self.run.record()
