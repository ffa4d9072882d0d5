"""HTTP streams of a run's events: from this process's run, or from another replica's Redis log.

Both replay what came after `after` (a client's Last-Event-ID), then follow live; a comment ping
keeps idle streams open through load balancers. Frames are encoded once (RunEvent.frame) and all
that is ready goes out in one `send`.
"""

from __future__ import annotations

import uuid

import anyio
import structlog
from redis.exceptions import RedisError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.core.asgi import PING, DisconnectWatch, send_body, start_sse
from app.core.errors import envelope
from app.runs.events import RunEvent
from app.runs.manager import Run
from app.runs.store import RunStore

log = structlog.get_logger(__name__)


class RunStreamResponse(Response):
    """Follows a run of this process: replays what came after `after`, then streams it live."""

    def __init__(
        self, run: Run, *, ping_seconds: float, after: int = 0, cancel_on_disconnect: bool = True
    ) -> None:
        super().__init__()
        self.target = run
        self.ping_seconds, self.after, self.cancel_on_disconnect = ping_seconds, after, cancel_on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        run = self.target

        def left() -> None:
            if self.cancel_on_disconnect:
                run.cancel("client_disconnected")

        async with anyio.create_task_group() as group:
            group.start_soon(DisconnectWatch(receive, group, left).run)
            await start_sse(send)
            index = self.after
            while True:
                await run.wait_beyond(index, self.ping_seconds)
                if index < len(run.events):
                    fresh = run.events[index:]
                    index += len(fresh)
                    await send_body(send, b"".join(e.sse() for e in fresh))
                    if fresh[-1].terminal:
                        break
                elif run.finished:
                    break
                else:
                    await send_body(send, PING)
            await send_body(send, b"", more=False)
            group.cancel_scope.cancel()


class StoredRunStreamResponse(Response):
    """Follows a run of another replica through its Redis event log."""

    def __init__(self, store: RunStore, run_id: uuid.UUID, *, ping_seconds: float, after: int) -> None:
        super().__init__()
        self.store, self.run_id, self.ping_seconds, self.after = store, run_id, ping_seconds, after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(DisconnectWatch(receive, group).run)
            await start_sse(send)
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
                    await send_body(send, failure.sse())
                    break
                if events:
                    idle = 0.0
                    last = events[-1].seq
                    await send_body(send, b"".join(e.sse() for e in events))
                    if events[-1].terminal:
                        break
                    continue
                idle += block_ms / 1000
                owner = await self.store.owner(self.run_id)
                if owner is None or (owner[1] == "finished" and not await self.store.read(self.run_id, last, 0)):
                    break  # expired, or finished with nothing more to say
                if idle >= self.ping_seconds:
                    idle = 0.0
                    await send_body(send, PING)
            await send_body(send, b"", more=False)
            group.cancel_scope.cancel()
