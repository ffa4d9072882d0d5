"""Per-key limits: requests per minute and model tokens per UTC day.

With Redis the counters are shared, so N replicas admit the configured limit, not N times it:
fixed windows counted with one atomic script. Without Redis the counters are per process.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from redis.asyncio import Redis

# INCRBY and set the window's expiry in one step, returning the new count and the ms left.
_HIT = """
local n = redis.call('incrby', KEYS[1], ARGV[1])
if n == tonumber(ARGV[1]) then redis.call('pexpire', KEYS[1], ARGV[2]) end
return {n, redis.call('pttl', KEYS[1])}
"""
DAY = 86_400


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_seconds)
        return headers


def _seconds_to_midnight(now: float) -> int:
    return DAY - int(now) % DAY


def _day(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")


class Counters(Protocol):
    async def add(self, key: str, amount: int, window_ms: int) -> tuple[int, int]: ...
    async def get(self, key: str) -> int: ...


class RedisCounters:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis, self.prefix = redis, prefix + "limit:"

    async def add(self, key: str, amount: int, window_ms: int) -> tuple[int, int]:
        count, ttl = await self.redis.eval(_HIT, 1, self.prefix + key, amount, window_ms)
        return int(count), int(ttl)

    async def get(self, key: str) -> int:
        return int(await self.redis.get(self.prefix + key) or 0)


class LocalCounters:
    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}

    async def add(self, key: str, amount: int, window_ms: int) -> tuple[int, int]:
        now = time.monotonic()
        count, expires = self._counts.get(key, (0, now + window_ms / 1000))
        if expires <= now:
            count, expires = 0, now + window_ms / 1000
        self._counts[key] = (count + amount, expires)
        return count + amount, int((expires - now) * 1000)

    async def get(self, key: str) -> int:
        count, expires = self._counts.get(key, (0, 0.0))
        return count if expires > time.monotonic() else 0


class Limits:
    def __init__(self, counters: Counters, *, per_minute: int, tokens_per_day: int) -> None:
        self.counters, self.per_minute, self.tokens_per_day = counters, per_minute, tokens_per_day

    async def hit_request(self, owner: uuid.UUID) -> Decision | None:
        if not self.per_minute:
            return None
        now = time.time()
        window = int(now // 60)
        count, ttl_ms = await self.counters.add(f"rpm:{owner}:{window}", 1, 61_000)
        reset = max(1, 60 - int(now) % 60)
        return Decision(count <= self.per_minute, self.per_minute, max(0, self.per_minute - count), reset)

    async def check_tokens(self, owner: uuid.UUID) -> Decision | None:
        if not self.tokens_per_day:
            return None
        now = time.time()
        used = await self.counters.get(f"tpd:{owner}:{_day(now)}")
        remaining = max(0, self.tokens_per_day - used)
        return Decision(used < self.tokens_per_day, self.tokens_per_day, remaining, _seconds_to_midnight(now))

    async def add_tokens(self, owner: uuid.UUID, tokens: int) -> None:
        if self.tokens_per_day and tokens > 0:
            await self.counters.add(f"tpd:{owner}:{_day(time.time())}", tokens, (DAY + 3600) * 1000)
