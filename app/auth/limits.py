"""Per-key limits: requests (GCRA), turns in flight, and model tokens per UTC day.

With Redis every limit is shared, so N replicas admit the configured limit, not N times it: each
decision is one atomic script on the server's clock. Without Redis the same rules run per process.

- Requests: a sliding window (a log of the last minute's requests, at most `per_minute` entries),
  so at most `per_minute` pass in ANY 60 s — never twice the limit across a window edge.
- Turns in flight: a sorted set of the key's running turns, each entry expiring on its own (a
  crashed replica's turns free their slots after `ttl`), removed when the turn is recorded.
- Tokens: a day counter. Each model call reserves its worst case before it starts and settles to
  what it used after, so a turn overshoots the quota by at most the one call that crossed it.
"""

from __future__ import annotations

import math
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from redis.asyncio import Redis

DAY = 86_400
MINUTE_MS = 60_000

# Sliding window on the server's clock: drop entries older than the window, refuse when full (with
# the ms until the oldest leaves), else log this request. Returns {allowed, wait ms, count}.
_WINDOW = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('zremrangebyscore', KEYS[1], '-inf', now - window)
local used = redis.call('zcard', KEYS[1])
if used >= limit then
  local oldest = redis.call('zrange', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, tonumber(oldest[2]) + window - now, used}
end
redis.call('zadd', KEYS[1], now, t[1] .. t[2] .. ARGV[3])
redis.call('pexpire', KEYS[1], window)
return {1, 0, used + 1}
"""
# A slot among at most ARGV[2]: drop expired entries, refuse when full, else add ours with its expiry.
_ACQUIRE = """
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('zremrangebyscore', KEYS[1], '-inf', now)
local used = redis.call('zcard', KEYS[1])
if used >= tonumber(ARGV[2]) then return {0, used} end
redis.call('zadd', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('pexpire', KEYS[1], tonumber(ARGV[3]))
return {1, used + 1}
"""
# Reserve ARGV[1] tokens unless the day's count already reached ARGV[2]; returns {allowed, count}.
_RESERVE = """
local used = tonumber(redis.call('get', KEYS[1]) or 0)
if used >= tonumber(ARGV[2]) then return {0, used} end
local n = redis.call('incrby', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('pexpire', KEYS[1], ARGV[3]) end
return {1, n}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    retry_after: int | None = None  # seconds; None means "at the reset"

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after if self.retry_after is not None else self.reset_seconds)
        return headers


def _seconds_to_midnight(now: float) -> int:
    return DAY - int(now) % DAY


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")


def _ceil_seconds(ms: float) -> int:
    return max(1, math.ceil(ms / 1000))


class Counters(Protocol):
    async def window(self, key: str, limit: int, window_ms: int) -> tuple[bool, int, int]: ...
    async def acquire(self, key: str, member: str, cap: int, ttl_ms: int) -> tuple[bool, int]: ...
    async def release(self, key: str, member: str) -> None: ...
    async def reserve(self, key: str, amount: int, limit: int, window_ms: int) -> tuple[bool, int]: ...
    async def add(self, key: str, amount: int, window_ms: int) -> int: ...
    async def get(self, key: str) -> int: ...


class RedisCounters:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis, self.prefix = redis, prefix + "limit:"

    async def window(self, key: str, limit: int, window_ms: int) -> tuple[bool, int, int]:
        nonce = secrets.token_hex(4)  # two requests in one microsecond are still two entries
        allowed, wait_ms, used = await self.redis.eval(_WINDOW, 1, self.prefix + key, window_ms, limit, nonce)
        return bool(allowed), int(wait_ms), int(used)

    async def acquire(self, key: str, member: str, cap: int, ttl_ms: int) -> tuple[bool, int]:
        allowed, used = await self.redis.eval(_ACQUIRE, 1, self.prefix + key, member, cap, ttl_ms)
        return bool(allowed), int(used)

    async def release(self, key: str, member: str) -> None:
        await self.redis.zrem(self.prefix + key, member)

    async def reserve(self, key: str, amount: int, limit: int, window_ms: int) -> tuple[bool, int]:
        allowed, count = await self.redis.eval(_RESERVE, 1, self.prefix + key, amount, limit, window_ms)
        return bool(allowed), int(count)

    async def add(self, key: str, amount: int, window_ms: int) -> int:
        count = await self.redis.incrby(self.prefix + key, amount)
        await self.redis.pexpire(self.prefix + key, window_ms, nx=True)
        return int(count)

    async def get(self, key: str) -> int:
        return int(await self.redis.get(self.prefix + key) or 0)


class LocalCounters:
    """The same rules for one process (the embedded default)."""

    def __init__(self) -> None:
        self._logs: dict[str, deque[float]] = {}
        self._slots: dict[str, dict[str, float]] = {}
        self._counts: dict[str, tuple[int, float]] = {}

    async def window(self, key: str, limit: int, window_ms: int) -> tuple[bool, int, int]:
        now = time.monotonic() * 1000
        log = self._logs.setdefault(key, deque())
        while log and log[0] <= now - window_ms:
            log.popleft()
        if len(log) >= limit:
            return False, int(log[0] + window_ms - now), len(log)
        log.append(now)
        return True, 0, len(log)

    async def acquire(self, key: str, member: str, cap: int, ttl_ms: int) -> tuple[bool, int]:
        now = time.monotonic() * 1000
        slots = {m: until for m, until in self._slots.get(key, {}).items() if until > now}
        self._slots[key] = slots
        if len(slots) >= cap:
            return False, len(slots)
        slots[member] = now + ttl_ms
        return True, len(slots)

    async def release(self, key: str, member: str) -> None:
        self._slots.get(key, {}).pop(member, None)

    async def reserve(self, key: str, amount: int, limit: int, window_ms: int) -> tuple[bool, int]:
        used = await self.get(key)
        if used >= limit:
            return False, used
        return True, await self.add(key, amount, window_ms)

    async def add(self, key: str, amount: int, window_ms: int) -> int:
        now = time.monotonic()
        count, expires = self._counts.get(key, (0, now + window_ms / 1000))
        if expires <= now:
            count, expires = 0, now + window_ms / 1000
        self._counts[key] = (count + amount, expires)
        return count + amount

    async def get(self, key: str) -> int:
        count, expires = self._counts.get(key, (0, 0.0))
        return count if expires > time.monotonic() else 0


class Limits:
    def __init__(
        self,
        counters: Counters,
        *,
        per_minute: int,
        tokens_per_day: int,
        turns_in_flight: int = 0,
        turn_ttl: float = 360,
    ) -> None:
        self.counters, self.per_minute, self.tokens_per_day = counters, per_minute, tokens_per_day
        self.turns_in_flight, self.turn_ttl_ms = turns_in_flight, int(turn_ttl * 1000)

    async def hit_request(self, owner: uuid.UUID) -> Decision | None:
        if not self.per_minute:
            return None
        allowed, wait_ms, used = await self.counters.window(f"rpm:{owner}", self.per_minute, MINUTE_MS)
        remaining = max(0, self.per_minute - used)
        reset = _ceil_seconds(wait_ms) if not allowed else 60  # a full allowance again at the latest then
        return Decision(allowed, self.per_minute, remaining, reset, _ceil_seconds(wait_ms))

    async def acquire_turn(self, owner: uuid.UUID, turn_id: uuid.UUID) -> Decision | None:
        """A slot for a turn in flight; released by `release_turn` (or by time, if its replica dies)."""
        if not self.turns_in_flight:
            return None
        allowed, used = await self.counters.acquire(
            f"inflight:{owner}", str(turn_id), self.turns_in_flight, self.turn_ttl_ms
        )
        # Retry soon: a slot frees as soon as one of the key's turns ends.
        return Decision(allowed, self.turns_in_flight, max(0, self.turns_in_flight - used), 1, 1)

    async def release_turn(self, owner: uuid.UUID, turn_id: uuid.UUID) -> None:
        if self.turns_in_flight:
            await self.counters.release(f"inflight:{owner}", str(turn_id))

    async def check_tokens(self, owner: uuid.UUID) -> Decision | None:
        if not self.tokens_per_day:
            return None
        now = time.time()
        used = await self.counters.get(f"tpd:{owner}:{_day(now)}")
        remaining = max(0, self.tokens_per_day - used)
        return Decision(used < self.tokens_per_day, self.tokens_per_day, remaining, _seconds_to_midnight(now))

    async def reserve_tokens(self, owner: uuid.UUID, tokens: int) -> Decision | None:
        """Before a model call: reserve its worst case, unless the day's quota is already spent."""
        if not self.tokens_per_day:
            return None
        now = time.time()
        allowed, used = await self.counters.reserve(
            f"tpd:{owner}:{_day(now)}", tokens, self.tokens_per_day, (DAY + 3600) * 1000
        )
        remaining = max(0, self.tokens_per_day - used)
        return Decision(allowed, self.tokens_per_day, remaining, _seconds_to_midnight(now))

    async def settle_tokens(self, owner: uuid.UUID, reserved: int, used: int) -> None:
        """After a model call: replace its reservation by what it used."""
        if self.tokens_per_day and used != reserved:
            await self.counters.add(f"tpd:{owner}:{_day(time.time())}", used - reserved, (DAY + 3600) * 1000)
