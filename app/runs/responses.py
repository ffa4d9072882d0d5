"""HTTP streams of a run's events: from this process's run, or from another replica's Redis log.

Both replay what came after `after` (a client's Last-Event-ID), then follow live; a comment ping
keeps idle streams open through load balancers. Frames are encoded once (RunEvent.frame) and all
that is ready goes out in one `send`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import structlog
from redis.exceptions import RedisError
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from app.core.asgi import PING, DisconnectWatch, send_body, send_now, start_sse
from app.core.errors import envelope
from app.core.redis import FOLLOW_BLOCK_SECONDS
from app.runs.events import RunEvent
from app.runs.followers import Ticket
from app.runs.manager import Run, wake
from app.runs.store import RunStore

log = structlog.get_logger(__name__)


def sse_frames(events: list[RunEvent]) -> bytes:
    """Run events as Server-Sent Events, each encoded once when it was published."""
    if len(events) == 1:
        return events[0].frame  # at real speed, the usual case: one event per write
    return b"".join([e.frame for e in events])


class _Follower(Response):
    """A stream that follows a run, holding a follower ticket (the per-key cap) until it ends."""

    ticket: Ticket | None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._follow(receive, send)
        finally:
            if self.ticket is not None:
                self.ticket.release()

    async def _follow(self, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RunStreamResponse(_Follower):
    """Follows a run of this process: replays what came after `after`, then streams it live."""

    def __init__(
        self,
        run: Run,
        *,
        ping_seconds: float,
        after: int = 0,
        cancel_on_disconnect: bool = True,
        ticket: Ticket | None = None,
        encode: Callable[[list[RunEvent]], bytes] = sse_frames,
    ) -> None:
        super().__init__()
        self.target, self.ticket, self.encode = run, ticket, encode
        self.ping_seconds, self.after, self.cancel_on_disconnect = ping_seconds, after, cancel_on_disconnect

    async def _follow(self, receive: Receive, send: Send) -> None:
        run = self.target

        def left() -> None:
            if self.cancel_on_disconnect:
                run.cancel("client_disconnected")

        async with DisconnectWatch(receive, left):
            await start_sse(send)
            index = self.after
            while True:
                if index < len(run.events):
                    fresh = run.events[index:]
                    index += len(fresh)
                    if fresh[-1].terminal:
                        await send_body(send, self.encode(fresh), more=False)  # with the body's end: one write
                        return
                    await send_body(send, self.encode(fresh))
                elif run.finished:
                    break
                elif run.direct is None:
                    # Caught up and the run's only live follower here: its events come to this
                    # socket as they are published, and this task sleeps until the run ends, the
                    # client's buffer fills, or a ping is due.
                    index, ended = await self._live(run, send, index)
                    if ended:
                        return
                else:
                    await run.wait_beyond(index, self.ping_seconds)
                    if index == len(run.events) and not run.finished:
                        await send_body(send, PING)
            await send_body(send, b"", more=False)

    async def _live(self, run: Run, send: Send, index: int) -> tuple[int, bool]:
        """Follow as the run's direct sink; returns the index it got to (what was written), and
        whether that ended the body (the run's last event went out with it)."""
        sink = Direct(send, self.encode, index)
        run.direct = sink
        try:
            await sink.wait(self.ping_seconds)
        finally:
            if run.direct is sink:
                run.direct = None
            sink.close()
        if sink.error is not None:
            raise sink.error
        if sink.pending is not None:
            await sink.pending  # a write that waits for the client to drain its buffer
        elif sink.ping_due:
            await send_body(send, PING)
        return sink.index, sink.ended


class Direct:
    """A follower's socket, written by whoever publishes the run's events (the run's task).

    Frames published together (in one step of the publishing task: several events from one read of
    the model's stream) go out in one write, at the end of that step (`call_soon`). The write
    itself is stepped here (`send_now`): it completes at once unless the client's buffer is full;
    then, or on any failure, or at the run's last event, the follower's task takes over again.
    """

    __slots__ = (
        "send",
        "encode",
        "index",
        "frames",
        "last",
        "done",
        "pending",
        "error",
        "ping_due",
        "ended",
        "_loop",
        "_open",
    )

    def __init__(self, send: Send, encode: Callable[[list[RunEvent]], bytes], index: int) -> None:
        self.send, self.encode, self.index = send, encode, index  # index: events written so far
        self.frames: list[RunEvent] = []  # published, to be written at the end of this step
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()  # when the socket last got something
        self.done: asyncio.Future[None] = self._loop.create_future()
        self.pending: Awaitable[None] | None = None
        self.error: Exception | None = None
        self.ping_due = False
        self.ended = False  # the run's last event was written, and with it the body's end
        self._open = True

    def push(self, item: RunEvent) -> None:
        if not self.frames:
            self._loop.call_soon(self._flush)
        self.frames.append(item)

    def _flush(self) -> None:
        frames, self.frames = self.frames, []
        if not self._open or not frames:
            return  # the follower took over: it writes from `index` on
        try:
            last = frames[-1].terminal  # then the body ends with these frames: one write, not two
            message: Message = {"type": "http.response.body", "body": self.encode(frames), "more_body": not last}
            pending = send_now(self.send, message)
        except Exception as exc:  # the server's own failure: the follower raises it
            self.error = exc
            self._end()
            return
        self.index = frames[-1].seq
        self.last = self._loop.time()
        self.ended = last
        if pending is not None:
            self.pending = pending
            self._end()
        elif last:
            self._end()

    def _end(self) -> None:
        self._open = False
        wake(self.done)

    def close(self) -> None:
        self._open = False
        self.frames = []

    async def wait(self, ping_seconds: float) -> None:
        """Until the sink ends, or nothing was written for `ping_seconds` (then `ping_due`)."""
        while self._open:
            quiet = self._loop.time() - self.last
            if quiet >= ping_seconds:
                self.ping_due = True
                return
            # One timer per ping period, not one per event: woken early only by the sink's end.
            waiter = self.done = self._loop.create_future()
            timer = self._loop.call_later(ping_seconds - quiet, wake, waiter)
            try:
                await waiter
            finally:
                timer.cancel()


class StoredRunStreamResponse(_Follower):
    """Follows a run of another replica through its Redis event log."""

    def __init__(
        self, store: RunStore, run_id: uuid.UUID, *, ping_seconds: float, after: int, ticket: Ticket | None = None
    ) -> None:
        super().__init__()
        self.store, self.run_id, self.ping_seconds, self.after = store, run_id, ping_seconds, after
        self.ticket = ticket

    async def _follow(self, receive: Receive, send: Send) -> None:
        async with DisconnectWatch(receive):
            await start_sse(send)
            last = self.after
            # Below the socket time-out: a quiet run (a slow tool, a thinking model) is an empty
            # read and another wait, not a dead connection.
            block_ms = int(min(self.ping_seconds, FOLLOW_BLOCK_SECONDS) * 1000)
            idle = 0.0
            while True:
                try:
                    events: list[RunEvent] = await self.store.read(self.run_id, last, block_ms)
                except (RedisError, OSError) as exc:
                    log.warning("run.follow_failed", run_id=str(self.run_id), error=type(exc).__name__)
                    await send_body(send, _unavailable(last, "The run's event log is unavailable."))
                    break
                if events and events[0].seq != last + 1:
                    # Events between the last one sent and these are gone (Redis lost its data, or
                    # trimmed a long log): say so rather than stream on with a hole in the answer.
                    log.warning("run.follow_gap", run_id=str(self.run_id), after=last, next=events[0].seq)
                    await send_body(send, _unavailable(last, LOST))
                    break
                if events:
                    idle = 0.0
                    last = events[-1].seq
                    await send_body(send, sse_frames(events))
                    if events[-1].terminal:
                        break
                    continue
                idle += block_ms / 1000
                owner = await self.store.owner(self.run_id)
                if owner is None:
                    # Expired, or lost with Redis's data, before its end reached this follower.
                    log.warning("run.follow_lost", run_id=str(self.run_id), after=last)
                    await send_body(send, _unavailable(last, LOST))
                    break
                if owner[1] == "finished" and not await self.store.read(self.run_id, last, 0):
                    break  # finished with nothing more to say
                if idle >= self.ping_seconds:
                    idle = 0.0
                    await send_body(send, PING)
            await send_body(send, b"", more=False)


LOST = "The run's event log is gone; the conversation's messages have its answer once it is recorded."


def _unavailable(last: int, message: str) -> bytes:
    return RunEvent(last + 1, "error", envelope("unavailable", message)).sse()
