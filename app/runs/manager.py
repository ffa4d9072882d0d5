"""Streamed turns run as runs: owned by the app (not by the request), their events kept so a client
can leave, come back on any replica with Last-Event-ID, and miss nothing.

A run's HTTP stream is one follower among many. With `on_disconnect: "cancel"` (the default) the
last word of its client cancels it; with `"continue"` it runs to the end regardless. Any replica
can cancel a run: the request is published on Redis, and the replica that runs it acts.

Starting a run sends nothing to Redis: its registration (meta, entry among the running) goes with
the mirror's next slice, the one command per slice for every run's events (app/runs/store.py).
So a client may hear `start` before another replica can find the run: `find` asks Redis again,
for a run started a moment ago, before it concludes the run is unknown.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.exceptions import RedisError

from app.core.db import Database
from app.core.ids import created_ms
from app.core.lifecycle import Lifecycle
from app.core.locks import Lock
from app.core.metrics import Metrics
from app.core.telemetry import trace_headers
from app.runs.events import RunEvent
from app.runs.leases import Leases, keep_lease, keep_sweeping, settle_orphans, sweep_abandoned_answers
from app.runs.store import MirrorKeys, Registration, RunStore

log = structlog.get_logger(__name__)

KEEP_FINISHED_SECONDS = 60.0
# Events are mirrored to Redis in time slices: one EVALSHA per slice for every run that has news,
# so the Redis cost follows time, not the number of deltas (or of runs).
MIRROR_INTERVAL = 0.02
# A run is known to Redis from its replica's first slice: a slice after its start, later when that
# replica's loop or Redis is slow. A miss for a run whose id was taken less than REGISTERED_WITHIN
# ago is asked again every FIND_AGAIN_AFTER until then; an older one is a miss at once.
FIND_AGAIN_AFTER = 2.5 * MIRROR_INTERVAL
REGISTERED_WITHIN = 2.0
Driver = Callable[["Run"], Awaitable[None]]
CANCEL_REASONS = ("cancelled", "interrupted")  # what a cancel request from another replica may say


class Sink(Protocol):
    """A live follower that takes each event as it is published (app/runs/responses.py)."""

    def push(self, item: RunEvent) -> None: ...


class Run:
    def __init__(self, run_id: uuid.UUID, owner_id: uuid.UUID, store: RunStore | None, manager: RunManager) -> None:
        self.id, self.owner_id, self.store, self.manager = run_id, owner_id, store, manager
        self.events: list[RunEvent] = []
        self.finished = False
        self.cancelled_by: str | None = None
        self.scope = anyio.CancelScope()
        self._waiters: list[asyncio.Future[None]] = []
        self.unmirrored = 0  # index of the first event not yet in Redis
        self.registration: Registration | None = None  # until the first slice has carried it
        self.traceparent: str | None = None  # the trace that started it (traces on, with Redis)
        self.mirror_keys: MirrorKeys = store.mirror_keys(run_id) if store is not None else (b"", b"", b"")
        # One live local follower, caught up, is handed each event as it is published: no task is
        # woken per event to relay it. Any other follower waits (wait_beyond).
        self.direct: Sink | None = None

    def publish(self, event: str, data: dict[str, Any], payload: str | None = None) -> RunEvent:
        """Append an event (`payload`: its data's JSON, when the caller has it from a template)."""
        item = RunEvent(len(self.events) + 1, event, data, payload)
        self.events.append(item)
        if item.terminal:
            self.finished = True
        if self.store is not None:
            self.manager.mirror_soon(self)
        if self.direct is not None:
            self.direct.push(item)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        return item

    def cancel(self, reason: str) -> None:
        if not self.finished and self.cancelled_by is None:
            self.cancelled_by = reason
            self.scope.cancel()

    async def wait_beyond(self, index: int, at_most: float) -> None:
        """Return once there is an event after `index`, the run has finished, or `at_most` seconds passed.

        One future and one timer per wait, nothing per event: a follower that is behind returns at once.
        """
        if index < len(self.events) or self.finished:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(at_most, wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()


def wake(waiter: asyncio.Future[None]) -> None:
    """Resolve a waiter unless it is done already (a timer's callback, or an early wake)."""
    if not waiter.done():
        waiter.set_result(None)


class RunManager:
    """Owns every run's task in one task group that lives as long as the app."""

    def __init__(
        self,
        store: RunStore | None,
        lifecycle: Lifecycle,
        metrics: Metrics,
        *,
        leases: Leases | None = None,
        db: Database | None = None,
        abandoned_after: float | None = None,
        mirror_interval: float = MIRROR_INTERVAL,
    ) -> None:
        self.store, self.lifecycle, self.metrics = store, lifecycle, metrics
        self.mirror_interval = mirror_interval
        self.leases, self.db, self.abandoned_after = leases, db, abandoned_after
        self.runs: dict[uuid.UUID, Run] = {}
        self._group: TaskGroup | None = None
        self._stack = AsyncExitStack()
        # Keyed by the run itself (identity-hashed), in publishing order: no UUID hash per event.
        self._to_mirror: dict[Run, None] = {}
        self._mirror_wakeup = asyncio.Event()
        self._mirror_armed = False  # the wakeup is set (or the loop is about to take the slice)
        self._mirror_now = False

    async def __aenter__(self) -> RunManager:
        self._group = await self._stack.enter_async_context(anyio.create_task_group())
        if self.store is not None:
            self._group.start_soon(self._listen_for_cancels)
            self._group.start_soon(self._mirror_loop)
        if self.leases is not None:
            self._group.start_soon(keep_lease, self.leases)
            self._group.start_soon(settle_orphans, self.leases, self.db, self.metrics)
        if self.db is not None and self.abandoned_after is not None:
            # Once before serving (what a restart after a crash left behind), then now and then.
            await sweep_abandoned_answers(self.db, self.metrics, self.abandoned_after)
            every = min(60.0, self.abandoned_after / 2)
            self._group.start_soon(keep_sweeping, self.db, self.metrics, self.abandoned_after, every)
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
        with anyio.move_on_after(5, shield=True):
            await self._mirror()  # the last slice, so replicas see every run's end
            if self.leases is not None and not any(not run.finished for run in self.runs.values()):
                try:
                    await self.leases.give_up()
                except (RedisError, OSError):
                    pass  # the lease lapses by itself

    async def _wait_finished(self, seconds: float) -> None:
        # A bounded poll, at shutdown only: simpler than an event per run for the same result.
        with anyio.move_on_after(seconds):
            while any(not run.finished for run in self.runs.values()):  # noqa: ASYNC110
                await anyio.sleep(0.05)

    def mirror_soon(self, run: Run) -> None:
        """Called for every published event (and a run's start): a dict store and two flag checks, the
        wakeup set once per slice."""
        self._to_mirror[run] = None
        if run.finished:
            # A run's end goes out at once: other replicas read "finished" from it (cancel, follow).
            self._mirror_now = True
        if not self._mirror_armed:
            self._mirror_armed = True
            self._mirror_wakeup.set()

    async def _mirror_loop(self) -> None:
        while True:
            await self._mirror_wakeup.wait()
            if not self._mirror_now:
                await asyncio.sleep(self.mirror_interval)  # let the slice fill
            self._mirror_wakeup.clear()
            self._mirror_armed = self._mirror_now = False
            await self._mirror()

    async def _mirror(self) -> None:
        """Copy every run's new events (and new runs' registrations) to Redis in one round trip, in order."""
        pending, self._to_mirror = self._to_mirror, {}
        batch = [(run, run.events[run.unmirrored :]) for run in pending if run.store is not None]
        batch = [(run, events) for run, events in batch if events or run.registration is not None]
        if not batch or self.store is None:
            return
        try:
            await self.store.append_many(
                [(run.mirror_keys, run.registration, events, run.finished) for run, events in batch]
            )
        except (RedisError, OSError) as exc:
            # Streaming goes on locally; only resuming elsewhere is lost for these runs. Said once per slice.
            log.warning("run.mirror_failed", runs=len(batch), error=type(exc).__name__)
            for run, _ in batch:
                run.store = None
            return
        finally:
            self.metrics.mirror_writes.inc()
        for run, events in batch:
            run.registration = None
            run.unmirrored += len(events)

    async def start(
        self,
        run_id: uuid.UUID,
        owner_id: uuid.UUID,
        driver: Driver,
        *,
        conversation_id: uuid.UUID | None = None,
        lock: Lock | None = None,
    ) -> Run:
        """Start `driver` as a run. The conversation and its lock are what another replica needs to
        settle the run should this one die. No Redis command of its own: the run is registered by the
        mirror's next slice (a Redis error there leaves it streaming here only, as for its events)."""
        assert self._group is not None
        run = Run(run_id, owner_id, self.store, self)
        if self.store is not None:
            run.traceparent, leases = trace_headers().get("traceparent"), self.leases
            run.registration = self.store.registration(
                run_id,
                owner_id,
                replica=leases.replica_id if leases is not None else None,
                settling=leases.settling(conversation_id, lock) if leases is not None else None,
                traceparent=run.traceparent,
            )
            self.mirror_soon(run)
        self.runs[run_id] = run
        self._group.start_soon(self._drive, run, driver)
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

    async def find(self, run_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
        """(owner, state) of a run this replica does not hold, from Redis; None: unknown there (or no
        Redis). A run started on another replica is known to Redis only from that replica's first
        slice, and its client may have heard `start` already: a miss for a run started less than
        REGISTERED_WITHIN ago (its id, a UUIDv7, says when) is asked again until then. An id without
        a time (a continuation's) is asked once more; an older one is a miss at once."""
        if self.store is None:
            return None
        found = await self.store.owner(run_id)
        if found is not None:
            return found
        taken = created_ms(run_id)
        if taken is None:
            await anyio.sleep(FIND_AGAIN_AFTER)
            return await self.store.owner(run_id)
        age = max(0.0, time.time() - taken / 1000)  # an id from a replica whose clock is ahead: from now
        deadline = time.monotonic() + REGISTERED_WITHIN - age
        while found is None and time.monotonic() < deadline:
            await anyio.sleep(FIND_AGAIN_AFTER)
            found = await self.store.owner(run_id)
        return found

    async def cancel(self, run_id: uuid.UUID, reason: str) -> None:
        """Cancel a run (or a turn answered as JSON, by its answer's id) here, or ask every replica to."""
        run = self.runs.get(run_id)
        if run is not None:
            run.cancel(reason)
        elif self.lifecycle.interrupt(run_id, reason):
            pass
        elif self.store is not None:
            await self.store.request_cancel(run_id, reason)

    async def _listen_for_cancels(self) -> None:
        assert self.store is not None
        while True:
            try:
                async with self.store.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.store.cancel_channel)
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        try:
                            # "<run id>" or "<run id> <reason>" (app/runs/store.py).
                            named, _, why = message["data"].decode().partition(" ")
                            run_id, reason = uuid.UUID(named), why if why in CANCEL_REASONS else "cancelled"
                            run = self.runs.get(run_id)
                        except (ValueError, UnicodeDecodeError, AttributeError):
                            # Anyone who can publish on the channel could send anything: skip it.
                            log.warning("run.cancel_message_invalid")
                            continue
                        if run is not None:
                            log.info("run.cancel_requested", run_id=str(run.id))
                            run.cancel(reason)
                        elif self.lifecycle.interrupt(run_id, reason):  # a turn answered as JSON
                            log.info("turn.interrupt_requested", message_id=str(run_id))
            except (RedisError, OSError) as exc:
                log.warning("run.cancel_listener_down", error=type(exc).__name__)
                await anyio.sleep(1.0)
