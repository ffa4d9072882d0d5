"""Streamed turns run as runs: owned by the app (not by the request), their events kept so a client
can leave, come back on any replica with Last-Event-ID, and miss nothing.

A run's HTTP stream is one follower among many. With `on_disconnect: "cancel"` (the default) the
last word of its client cancels it; with `"continue"` it runs to the end regardless. Any replica
can cancel a run: the request is published on Redis, and the replica that runs it acts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.exceptions import RedisError

from app.core.lifecycle import Lifecycle
from app.runs.events import RunEvent
from app.runs.store import RunStore

log = structlog.get_logger(__name__)

KEEP_FINISHED_SECONDS = 60.0
Driver = Callable[["Run"], Awaitable[None]]


class Run:
    def __init__(self, run_id: uuid.UUID, owner_id: uuid.UUID, store: RunStore | None) -> None:
        self.id, self.owner_id, self.store = run_id, owner_id, store
        self.events: list[RunEvent] = []
        self.finished = False
        self.cancelled_by: str | None = None
        self.scope = anyio.CancelScope()
        self._changed = anyio.Event()
        self._unsent: list[RunEvent] = []
        self._mirror_wakeup = anyio.Event()
        self._mirror_failed = False

    def publish(self, event: str, data: dict[str, Any]) -> RunEvent:
        item = RunEvent(len(self.events) + 1, event, data)
        self.events.append(item)
        if item.terminal:
            self.finished = True
        self._unsent.append(item)
        self._mirror_wakeup.set()
        self._changed.set()
        self._changed = anyio.Event()
        return item

    def cancel(self, reason: str) -> None:
        if not self.finished and self.cancelled_by is None:
            self.cancelled_by = reason
            self.scope.cancel()

    async def wait_beyond(self, index: int) -> None:
        """Return once there is an event after `index`, or the run has finished.

        A plain coroutine, not a generator: callers wrap it in a time-out to send pings, and a
        cancelled wait loses nothing.
        """
        while index >= len(self.events) and not self.finished:
            await self._changed.wait()

    async def mirror(self) -> None:
        """Copy events to Redis in batches, in order, so other replicas can replay them."""
        if self.store is None:
            return
        while True:
            await self._mirror_wakeup.wait()
            self._mirror_wakeup = anyio.Event()
            batch, self._unsent = self._unsent, []
            done = self.finished and not self._unsent
            if batch and not self._mirror_failed:
                try:
                    await self.store.append(self.id, batch, finished=done)
                except (RedisError, OSError) as exc:
                    # Streaming goes on locally; only resuming elsewhere is lost. Said once per run.
                    self._mirror_failed = True
                    log.warning("run.mirror_failed", run_id=str(self.id), error=type(exc).__name__)
            if done:
                return


class RunManager:
    """Owns every run's task in one task group that lives as long as the app."""

    def __init__(self, store: RunStore | None, lifecycle: Lifecycle) -> None:
        self.store, self.lifecycle = store, lifecycle
        self.runs: dict[uuid.UUID, Run] = {}
        self._group: TaskGroup | None = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> RunManager:
        self._group = await self._stack.enter_async_context(anyio.create_task_group())
        if self.store is not None:
            self._group.start_soon(self._listen_for_cancels)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Runs whose clients are gone still get the drain's grace period, then are interrupted.
        await self._wait_finished(self.lifecycle.grace_seconds)
        self.lifecycle.interrupt_all()
        assert self._group is not None
        await self._wait_finished(10)
        self._group.cancel_scope.cancel()
        await self._stack.__aexit__(exc_type, exc, tb)

    async def _wait_finished(self, seconds: float) -> None:
        # A bounded poll, at shutdown only: simpler than an event per run for the same result.
        with anyio.move_on_after(seconds):
            while any(not run.finished for run in self.runs.values()):  # noqa: ASYNC110
                await anyio.sleep(0.05)

    async def start(self, run_id: uuid.UUID, owner_id: uuid.UUID, driver: Driver) -> Run:
        assert self._group is not None
        run = Run(run_id, owner_id, self.store)
        if self.store is not None:
            try:
                await self.store.create(run_id, owner_id)
            except (RedisError, OSError) as exc:
                log.warning("run.store_unavailable", run_id=str(run_id), error=type(exc).__name__)
                run.store = None
        self.runs[run_id] = run
        self._group.start_soon(self._drive, run, driver)
        self._group.start_soon(run.mirror)
        return run

    async def _drive(self, run: Run, driver: Driver) -> None:
        try:
            await driver(run)
        except Exception:
            # The driver reports its own failures as events; this is the last line of defence.
            log.exception("run.crashed", run_id=str(run.id))
            if not run.finished:
                run.publish("error", {"error": {"type": "internal_error", "message": "Internal server error."}})
        finally:
            if not run.finished:
                run.publish("error", {"error": {"type": "cancelled", "message": "The run was cancelled."}})
            asyncio.get_running_loop().call_later(KEEP_FINISHED_SECONDS, self.runs.pop, run.id, None)

    async def cancel(self, run_id: uuid.UUID, reason: str) -> None:
        run = self.runs.get(run_id)
        if run is not None:
            run.cancel(reason)
        elif self.store is not None:
            await self.store.request_cancel(run_id)

    async def _listen_for_cancels(self) -> None:
        assert self.store is not None
        while True:
            try:
                async with self.store.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.store.cancel_channel)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        run = self.runs.get(uuid.UUID(message["data"].decode()))
                        if run is not None:
                            log.info("run.cancel_requested", run_id=str(run.id))
                            run.cancel("cancelled")
            except (RedisError, OSError) as exc:
                log.warning("run.cancel_listener_down", error=type(exc).__name__)
                await anyio.sleep(1.0)
