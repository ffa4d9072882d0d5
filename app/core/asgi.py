"""Small ASGI helpers shared by every streaming door: disconnect watching and SSE framing."""

from __future__ import annotations

from collections.abc import Callable

from anyio.abc import TaskGroup
from starlette.types import Message, Receive, Send

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]
PING = b": ping\n\n"


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


async def start_sse(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})


async def send_body(send: Send, chunk: bytes, *, more: bool = True) -> None:
    """One `send` for everything ready: callers join their frames first."""
    message: Message = {"type": "http.response.body", "body": chunk, "more_body": more}
    await send(message)
