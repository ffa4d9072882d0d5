"""Runs outlive the replica that runs them, in Redis: when a replica dies (SIGKILL, OOM, a lost
node), another one settles its runs.

Each replica renews a lease (`replica:<id>`, a key with a TTL) and lists its running runs in one
hash (a run is listed, and its meta written, by the mirror's first slice that carries it: see
app/runs/store.py). Every replica sweeps that hash now and then; a run whose replica's lease has
lapsed is claimed (SET NX, so one replica settles it) and settled: the answer recorded `incomplete`
with the partial text the run log holds, a final `error` event of type `interrupted` for every
follower, the conversation's lock freed (compare-and-delete with the dead turn's token).

A replica that dies before its first slice (a slice after a run's start, more if its loop or Redis
was slow) leaves no meta and no entry to sweep: its answer, still `in_progress`, is settled by the
abandoned-answer sweep (keep_sweeping, after the longest a turn can take), and its conversation
lock, no longer renewed, lapses by its TTL (app/core/locks.py).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.db import Database
from app.core.errors import envelope, is_db_unavailable
from app.core.locks import RELEASE_SCRIPT, Lock
from app.core.metrics import Metrics
from app.runs.events import RunEvent
from app.runs.repository import settle_interrupted, sweep_abandoned
from app.runs.store import running_key

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Orphan:
    """A run whose replica stopped: what settling it needs."""

    run_id: uuid.UUID
    owner_id: uuid.UUID
    conversation_id: uuid.UUID | None
    lock: tuple[str, str] | None  # (redis key, token)
    events: list[RunEvent]


class Leases:
    def __init__(self, redis: Redis, prefix: str, replica_id: str, lease_seconds: float, retention: int) -> None:
        self.redis, self.prefix, self.replica_id = redis, prefix, replica_id
        self.lease_ms, self.retention = int(lease_seconds * 1000), retention
        self.running_key = running_key(prefix)  # what the mirror's slices list runs in

    def _replica(self, replica_id: str) -> str:
        return f"{self.prefix}replica:{replica_id}"

    def _meta(self, run_id: uuid.UUID | str) -> str:
        return f"{self.prefix}run:{run_id}:meta"

    def _events(self, run_id: uuid.UUID | str) -> str:
        return f"{self.prefix}run:{run_id}:events"

    async def renew(self) -> None:
        await self.redis.set(self._replica(self.replica_id), "1", px=self.lease_ms)

    async def give_up(self) -> None:
        """At a clean shutdown: every run here has finished, so no one need wait for the lease to lapse."""
        await self.redis.delete(self._replica(self.replica_id))

    def settling(self, conversation_id: uuid.UUID | None, lock: Lock | None) -> dict[str, str]:
        """A run's meta beside its owner and state: where it runs and what settling it would need."""
        meta = {"replica": self.replica_id, "conversation": str(conversation_id or "")}
        if lock is not None:
            meta |= {"lock": f"{self.prefix}lock:{lock.name}", "lock_token": lock.token}
        return meta

    async def unregister(self, run_id: uuid.UUID) -> None:
        await self.redis.hdel(self.running_key, str(run_id))

    async def orphans(self) -> list[uuid.UUID]:
        """Runs listed as running on a replica whose lease has lapsed."""
        running: Any = await self.redis.hgetall(self.running_key)
        replicas = sorted({r.decode() for r in running.values()} - {self.replica_id})
        if not replicas:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for replica in replicas:
                pipe.exists(self._replica(replica))
            found = await pipe.execute()
        dead = {r for r, up in zip(replicas, found, strict=True) if not up}
        return [uuid.UUID(run.decode()) for run, replica in running.items() if replica.decode() in dead]

    async def alive(self, run_ids: list[uuid.UUID]) -> set[uuid.UUID]:
        """Those of `run_ids` listed as running on a replica whose lease holds (this one included)."""
        if not run_ids:
            return set()
        listed: Any = await self.redis.hmget(self.running_key, [str(r) for r in run_ids])
        where = {r: replica.decode() for r, replica in zip(run_ids, listed, strict=True) if replica is not None}
        replicas = sorted(set(where.values()))
        if not replicas:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for replica in replicas:
                pipe.exists(self._replica(replica))
            up = {r for r, exists in zip(replicas, await pipe.execute(), strict=True) if exists}
        return {r for r, replica in where.items() if replica in up}

    async def claim(self, run_id: uuid.UUID) -> Orphan | None:
        """Take the right to settle `run_id` (one replica wins), with its meta and its event log."""
        if not await self.redis.set(f"{self.prefix}settle:{run_id}", self.replica_id, nx=True, px=60_000):
            return None
        meta: Any = await self.redis.hgetall(self._meta(run_id))
        entries: Any = await self.redis.xrange(self._events(run_id))
        events = [RunEvent.from_fields(int(entry_id.split(b"-")[1]), fields) for entry_id, fields in entries]
        if not meta or (events and events[-1].terminal):
            await self.unregister(run_id)  # finished after all (its replica died after the end)
            return None
        conversation = meta.get(b"conversation", b"").decode()
        lock = (meta[b"lock"].decode(), meta[b"lock_token"].decode()) if b"lock" in meta else None
        return Orphan(
            run_id,
            uuid.UUID(meta[b"owner"].decode()),
            uuid.UUID(conversation) if conversation else None,
            lock,
            events,
        )

    async def close(self, orphan: Orphan, final: RunEvent) -> None:
        """The run's last event, for every follower; its lock freed; it is no longer running anywhere."""
        async with self.redis.pipeline(transaction=False) as pipe:
            fields: dict[Any, Any] = final.fields()
            pipe.xadd(self._events(orphan.run_id), fields, id=f"0-{final.seq}")
            pipe.expire(self._events(orphan.run_id), self.retention)
            pipe.hset(self._meta(orphan.run_id), "state", "finished")
            pipe.hdel(self.running_key, str(orphan.run_id))
            if orphan.lock is not None:
                pipe.eval(RELEASE_SCRIPT, 1, orphan.lock[0], orphan.lock[1])
            await pipe.execute()


# Where each door's run log carries the model's text: /chat's `delta`, the Responses API's.
TEXT_EVENTS = {"delta": "text", "response.output_text.delta": "delta"}


def partial_content(events: list[RunEvent]) -> list[dict[str, Any]]:
    """What the run log shows the model said before the replica died: its text, as one block."""
    text = "".join(str(e.data.get(TEXT_EVENTS[e.event], "")) for e in events if e.event in TEXT_EVENTS)
    return [{"type": "text", "text": text}] if text else []


def interrupted_error() -> dict[str, Any]:
    return {"type": "interrupted", "message": "The replica running this turn stopped; the partial answer was kept."}


async def keep_lease(leases: Leases) -> None:
    while True:
        try:
            await leases.renew()
        except (RedisError, OSError) as exc:
            log.warning("run.lease_renew_failed", error=type(exc).__name__)
        await anyio.sleep(leases.lease_ms / 3000)


async def settle_orphans(leases: Leases, db: Database | None, metrics: Metrics) -> None:
    """Now and then, settle the runs of replicas whose lease lapsed (one replica wins each)."""
    while True:
        await anyio.sleep(leases.lease_ms / 2000 * (0.75 + random.random() / 2))  # noqa: S311
        try:
            for run_id in await leases.orphans():
                orphan = await leases.claim(run_id)
                if orphan is not None:
                    await settle(leases, orphan, db, metrics)
        except (RedisError, OSError) as exc:
            log.warning("run.settle_failed", error=type(exc).__name__)


async def settle(leases: Leases, orphan: Orphan, db: Database | None, metrics: Metrics) -> None:
    error = interrupted_error()
    if orphan.conversation_id is not None and db is not None:
        try:
            async with db.statement() as conn:
                await settle_interrupted(
                    conn,
                    message_id=orphan.run_id,
                    conversation_id=orphan.conversation_id,
                    owner_id=orphan.owner_id,
                    content=partial_content(orphan.events),
                    error=error,
                )
        except Exception as exc:
            if not is_db_unavailable(exc):
                raise
            log.warning("run.settle_failed", run_id=str(orphan.run_id), error=type(exc).__name__)
            return  # the claim expires; a later sweep tries again
    last = orphan.events[-1].seq if orphan.events else 0
    await leases.close(orphan, RunEvent(last + 1, "error", envelope(error["type"], error["message"])))
    metrics.runs_settled.inc()
    log.warning("run.settled_orphan", run_id=str(orphan.run_id), events=len(orphan.events))


async def sweep_abandoned_answers(db: Database, metrics: Metrics, older_than: float) -> None:
    """Settle answers a dead process left `in_progress` (JSON turns, runs without Redis)."""
    try:
        async with db.statement() as conn:
            settled = await sweep_abandoned(conn, older_than=older_than, error=interrupted_error())
    except Exception as exc:
        if not is_db_unavailable(exc):
            raise
        log.warning("run.sweep_failed", error=type(exc).__name__)
        return
    if settled:
        metrics.runs_settled.inc(settled)
        log.warning("run.swept_abandoned", answers=settled)


async def keep_sweeping(db: Database, metrics: Metrics, older_than: float, every: float) -> None:
    while True:
        await anyio.sleep(every * (0.75 + random.random() / 2))  # noqa: S311
        await sweep_abandoned_answers(db, metrics, older_than)
