"""Small ASGI helpers shared by every streaming door: disconnect watching and SSE framing."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

import structlog
from starlette.types import Message, Receive, Send

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # nginx: do not buffer the stream
]
PING = b": ping\n\n"
log = structlog.get_logger(__name__)


class DisconnectWatch:
    """`async with DisconnectWatch(receive) as watch:` runs the block in this task; if the client
    goes away first, the block is cancelled (only it: the `async with` ends there, with
    `watch.client_left` set) and `on_leave` is called.

    One watcher task on asyncio, not an anyio task group: a task group per request costs ten
    times as much CPU, and this is on every turn.
    """

    def __init__(self, receive: Receive, on_leave: Callable[[], None] | None = None) -> None:
        self.receive, self.on_leave = receive, on_leave
        self.client_left = False
        self._task: asyncio.Task[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._active = False

    async def __aenter__(self) -> DisconnectWatch:
        self._task = asyncio.current_task()
        self._active = True
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        self._watcher.add_done_callback(_retrieve)
        return self

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        if self._active:
            self.client_left = True
            if self.on_leave is not None:
                self.on_leave()
            assert self._task is not None
            self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        self._active = False
        assert self._task is not None
        assert self._watcher is not None
        self._watcher.cancel()
        if not self.client_left:
            return False
        # Our own cancel ends the block; any other (a shutdown, an outer timeout) goes on up.
        return self._task.uncancel() == 0 and exc_type is asyncio.CancelledError


def _retrieve(watcher: asyncio.Task[None]) -> None:
    """A receive() that failed (the server's own error) ends only the watch; its error is not lost."""
    if not watcher.cancelled() and (exc := watcher.exception()) is not None:
        log.warning("http.disconnect_watch_failed", error=type(exc).__name__)


async def start_sse(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})


async def send_body(send: Send, chunk: bytes, *, more: bool = True) -> None:
    """One `send` for everything ready: callers join their frames first."""
    message: Message = {"type": "http.response.body", "body": chunk, "more_body": more}
    await send(message)


def body(chunk: bytes) -> Message:
    return {"type": "http.response.body", "body": chunk, "more_body": True}


def send_now(send: Send, message: Message) -> Awaitable[None] | None:
    """Run `send(message)` here and now, outside any task switch: None when it is done (the usual
    case: the server wrote the bytes to its socket); otherwise an awaitable that finishes it, to be
    awaited by a task (the server waits for a slow client to drain its buffer first).

    This lets whoever publishes an event write it to a follower's socket at once, with no task woken
    per event; only a full socket buffer costs a task its wait.
    """
    coro = send(message)
    # The exact type first: an ABC's isinstance costs a Python call, and this runs once per write.
    if not (type(coro) is types.CoroutineType or isinstance(coro, Coroutine)):
        return coro  # not started: awaiting it sends
    try:
        waits_on = coro.send(None)
    except StopIteration:
        return None
    return _finish(coro, waits_on)


@types.coroutine
def _finish(coro: Coroutine[Any, Any, None], waits_on: Any) -> Generator[Any, Any, None]:
    """Step a coroutine that suspended outside a task on, in the task that awaits this, as that
    task would have done: what it waits on goes to the task; what the task sends or throws back
    goes to it."""
    while True:
        try:
            value = yield waits_on
        except BaseException as exc:
            try:
                waits_on = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                waits_on = coro.send(value)
            except StopIteration:
                return
