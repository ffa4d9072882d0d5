"""The Redis side of runs: an event log per run (a stream with bounded retention), its meta (owner,
state, and with leases where it runs and what settling it would need), and a channel on which any
replica can ask the one running a turn to cancel it.

A run is registered (its meta, and its entry among the running) by the mirror's slice that first
carries it, in the same command as every run's events: a streamed turn sends no Redis command of
its own (issue #28). Until that slice (a MIRROR_INTERVAL after `start`, more when the loop or Redis
is slow) Redis does not know the run: remote lookups of a run started a moment ago ask again until
it is known (RunManager.find)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from app.runs.events import RunEvent

# Explicit ids 0-<seq>: a reader resumes with XRANGE/XREAD from the last sequence it saw. An id
# already there (a slice retried after Redis applied it) is skipped, not an error that would stop
# the rest of the batch: pcall. Per run, one argument: "<first new sequence> <how many>", and its
# id after them when it finished (a run's new events are consecutive: their ids follow); then per
# event its name and data. In the slice that first carries a run, its registration comes before
# that: "+<n> <run id> <replica>" (id and replica only with leases) and n meta fields and values.
# The meta says `running` and the run is listed among the running, unless it finished in this very
# slice (a fast turn): then its meta says `finished` and it is never listed.
APPEND = """
local retention, maxlen, a = ARGV[1], ARGV[2], 3
for k = 2, #KEYS, 2 do
  local events, meta = KEYS[k], KEYS[k + 1]
  local listed, replica = '', ''
  if string.byte(ARGV[a]) == 43 then
    local n
    n, listed, replica = string.match(ARGV[a], '^%+(%d+) ?(%S*) ?(%S*)$')
    n = tonumber(n)
    redis.call('HSET', meta, unpack(ARGV, a + 1, a + n))
    a = a + 1 + n
  end
  local seq, n, finished = string.match(ARGV[a], '^(%d+) (%d+) ?(.*)$')
  seq, n, a = tonumber(seq), tonumber(n), a + 1
  for i = 0, n - 1 do
    redis.pcall('XADD', events, 'MAXLEN', '~', maxlen, '0-' .. (seq + i), 'event', ARGV[a], 'data', ARGV[a + 1])
    a = a + 2
  end
  redis.call('EXPIRE', events, retention)
  if finished ~= '' then
    redis.call('HSET', meta, 'state', 'finished')
    redis.call('HDEL', KEYS[1], finished)
  elseif listed ~= '' then
    redis.call('HSET', KEYS[1], listed, replica)
  end
  redis.call('EXPIRE', meta, retention)
end
"""
MirrorKeys = tuple[bytes, bytes, bytes]  # a run's events key, meta key and id, encoded once per run
Registration = tuple[bytes, ...]  # a run's registration as APPEND takes it, encoded once per run


def running_key(prefix: str) -> str:
    """The hash of runs running (run id -> replica): the mirror lists a run there, the leases'
    sweep (app/runs/leases.py) settles what a dead replica left in it."""
    return prefix + "runs:running"


class RunStore:
    def __init__(
        self, redis: Redis, prefix: str, retention_seconds: int, max_events: int, *, reader: Redis | None = None
    ) -> None:
        self.redis, self.prefix = redis, prefix + "run:"
        # Followers' blocking reads go through their own pool (app/core/redis.py), never the main one.
        self.reader = reader if reader is not None else redis
        self.retention, self.max_events = retention_seconds, max_events
        self.cancel_channel = prefix + "runs:cancel"
        self.running_key = running_key(prefix)
        self._append = redis.register_script(APPEND)
        self._running = self.running_key.encode()
        self._retention, self._max_events = b"%d" % retention_seconds, b"%d" % max_events

    def mirror_keys(self, run_id: uuid.UUID) -> MirrorKeys:
        return self._events(run_id).encode(), self._meta(run_id).encode(), str(run_id).encode()

    def _events(self, run_id: uuid.UUID) -> str:
        return f"{self.prefix}{run_id}:events"

    def _meta(self, run_id: uuid.UUID) -> str:
        return f"{self.prefix}{run_id}:meta"

    def registration(
        self,
        run_id: uuid.UUID,
        owner_id: uuid.UUID,
        *,
        replica: str | None = None,
        settling: dict[str, str] | None = None,
        traceparent: str | None = None,
    ) -> Registration:
        """A run's meta (its owner, `running`, `settling`: what another replica needs should this one
        die, the trace that started it) and, with a `replica`, its entry among the running: for the
        mirror's next slice."""
        meta = {"owner": str(owner_id), "state": "running", **(settling or {})}
        if traceparent is not None:  # traces on: followers' spans link to the run's
            meta["traceparent"] = traceparent
        head = b"+%d" % (2 * len(meta))
        if replica is not None:
            head += b" %s %s" % (str(run_id).encode(), replica.encode())
        return head, *(item.encode() for pair in meta.items() for item in pair)

    async def append_many(
        self, batch: Sequence[tuple[MirrorKeys, Registration | None, Sequence[RunEvent], bool]]
    ) -> None:
        """(run's keys, its registration if not yet sent, its new events (consecutive, maybe none),
        finished?) for several runs, in one round trip and one command.

        One EVALSHA per time slice, not an XADD (and EXPIREs) per event in a pipeline: redis-py's
        per-command cost (building, packing, parsing each reply) was most of the mirror's CPU, which
        was a sixth of the service's with 100 streams at real speed (issue #28). Every argument goes
        as bytes (redis-py's encoder passes bytes through at its first check), the keys encoded once
        per run, a run costs one argument beside its two keys and an event two: at real speed a slice
        carries about one event per run, so these arguments are the mirror's cost per delta. A run's
        registration rides in its first slice only (a few arguments, once per run).
        """
        keys: list[bytes] = [self._running]
        args: list[bytes] = [self._retention, self._max_events]
        for (events_key, meta_key, run_id), registration, events, finished in batch:
            keys += (events_key, meta_key)
            if registration is not None:
                args += registration
            first = events[0].seq if events else 0
            args.append(b"%d %d %s" % (first, len(events), run_id) if finished else b"%d %d" % (first, len(events)))
            for event in events:
                args += (event.event.encode(), event.payload.encode())
        await self._append(keys=keys, args=args)

    async def owner(self, run_id: uuid.UUID) -> tuple[uuid.UUID, str] | None:
        meta: dict[Any, Any] = await self.redis.hgetall(self._meta(run_id))
        if b"owner" not in meta:  # none, or only what the mirror wrote after Redis lost the rest
            return None
        return uuid.UUID(meta[b"owner"].decode()), meta[b"state"].decode()

    async def traceparent(self, run_id: uuid.UUID) -> str | None:
        """The trace of the request that started the run (None: traces were off there)."""
        value: Any = await self.redis.hget(self._meta(run_id), "traceparent")
        return value.decode() if isinstance(value, bytes) else value

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
