"""The Redis side of runs: an event log per run (a stream with bounded retention), its owner,
and a channel on which any replica can ask the one running a turn to cancel it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from app.runs.events import RunEvent


class RunStore:
    def __init__(
        self, redis: Redis, prefix: str, retention_seconds: int, max_events: int, *, reader: Redis | None = None
    ) -> None:
        self.redis, self.prefix = redis, prefix + "run:"
        # Followers' blocking reads go through their own pool (app/core/redis.py), never the main one.
        self.reader = reader if reader is not None else redis
        self.retention, self.max_events = retention_seconds, max_events
        self.cancel_channel = prefix + "runs:cancel"
        self.running_key = prefix + "runs:running"  # run id -> replica, while it runs (app/runs/leases.py)

    def _events(self, run_id: uuid.UUID) -> str:
        return f"{self.prefix}{run_id}:events"

    def _meta(self, run_id: uuid.UUID) -> str:
        return f"{self.prefix}{run_id}:meta"

    async def create(self, run_id: uuid.UUID, owner_id: uuid.UUID) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._meta(run_id), mapping={"owner": str(owner_id), "state": "running"})
            pipe.expire(self._meta(run_id), self.retention)
            await pipe.execute()

    async def append_many(self, batch: Sequence[tuple[uuid.UUID, Sequence[RunEvent], bool]]) -> None:
        """(run id, its new events, finished?) for several runs, in one round trip."""
        # Explicit ids 0-<seq>: a reader resumes with XRANGE/XREAD from the last sequence it saw.
        async with self.redis.pipeline(transaction=False) as pipe:
            for run_id, events, finished in batch:
                key = self._events(run_id)
                for event in events:
                    fields: dict[Any, Any] = event.fields()
                    pipe.xadd(key, fields, id=f"0-{event.seq}", maxlen=self.max_events, approximate=True)
                pipe.expire(key, self.retention)
                if finished:
                    pipe.hset(self._meta(run_id), "state", "finished")
                    pipe.hdel(self.running_key, str(run_id))
                pipe.expire(self._meta(run_id), self.retention)
            await pipe.execute()

    async def owner(self, run_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
        meta: dict[Any, Any] = await self.redis.hgetall(self._meta(run_id))
        if b"owner" not in meta:  # none, or only what the mirror wrote after Redis lost the rest
            return None
        return uuid.UUID(meta[b"owner"].decode()), meta[b"state"].decode()

    async def read(self, run_id: uuid.UUID, after: int, block_ms: int) -> list[RunEvent]:
        """Events after `after`, waiting up to block_ms for new ones when there are none yet."""
        entries: Any = await self.reader.xrange(self._events(run_id), min=f"0-{after + 1}", count=500)
        if not entries and block_ms:
            found: Any = await self.reader.xread({self._events(run_id): f"0-{after}"}, count=500, block=block_ms)
            entries = found[0][1] if found else []
        return [RunEvent.from_fields(int(entry_id.split(b"-")[1]), fields) for entry_id, fields in entries]

    async def request_cancel(self, run_id: uuid.UUID, reason: str = "cancelled") -> None:
        # "<run id>" as before for a plain cancel; "<run id> <reason>" otherwise (app/runs/manager.py).
        await self.redis.publish(self.cancel_channel, str(run_id) if reason == "cancelled" else f"{run_id} {reason}")
