"""Locks that survive a crashed holder: a TTL renewed while held, released by the holder only.

With Redis they hold across replicas (SET NX PX, and Lua scripts that touch the key only while it
still carries our token). Without Redis they are per process, which is all one process needs.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import anyio
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
RELEASE_SCRIPT = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@dataclass(frozen=True, slots=True)
class Lock:
    name: str
    token: str


class LockManager(Protocol):
    ttl: float

    async def acquire(self, name: str) -> Lock | None: ...
    async def renew(self, lock: Lock) -> bool: ...
    async def release(self, lock: Lock) -> None: ...


class RedisLocks:
    def __init__(self, redis: Redis, prefix: str, ttl: float) -> None:
        self.redis, self.prefix, self.ttl = redis, prefix + "lock:", ttl

    async def acquire(self, name: str) -> Lock | None:
        token = secrets.token_hex(16)
        key = self.prefix + name
        if await self.redis.set(key, token, nx=True, px=int(self.ttl * 1000)):
            return Lock(name, token)
        # Busy, or ours already: a SET retried on a fresh connection (app/core/redis.py) finds the
        # key its first, unanswered attempt wrote. One more read, on the busy path only.
        return Lock(name, token) if await self.redis.get(key) == token.encode() else None

    async def renew(self, lock: Lock) -> bool:
        result = await self.redis.eval(_RENEW, 1, self.prefix + lock.name, lock.token, int(self.ttl * 1000))
        return bool(result)

    async def release(self, lock: Lock) -> None:
        await self.redis.eval(RELEASE_SCRIPT, 1, self.prefix + lock.name, lock.token)


class LocalLocks:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._held: dict[str, tuple[str, float]] = {}

    async def acquire(self, name: str) -> Lock | None:
        now = time.monotonic()
        held = self._held.get(name)
        if held is not None and held[1] > now:
            return None
        token = secrets.token_hex(16)
        self._held[name] = (token, now + self.ttl)
        return Lock(name, token)

    async def renew(self, lock: Lock) -> bool:
        held = self._held.get(lock.name)
        if held is None or held[0] != lock.token:
            return False
        self._held[lock.name] = (lock.token, time.monotonic() + self.ttl)
        return True

    async def release(self, lock: Lock) -> None:
        held = self._held.get(lock.name)
        if held is not None and held[0] == lock.token:
            del self._held[lock.name]


class Held:
    """A lock held by this process. `release()` may come early; it happens once."""

    def __init__(self, manager: LockManager, lock: Lock) -> None:
        self.manager, self.lock = manager, lock
        self.released = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        with anyio.move_on_after(2, shield=True):
            try:
                await self.manager.release(self.lock)
            except (RedisError, OSError) as exc:
                # The TTL frees it soon; nothing else to do.
                log.warning("lock.release_failed", lock=self.lock.name, error=type(exc).__name__)


@asynccontextmanager
async def kept(manager: LockManager, lock: Lock) -> AsyncIterator[Held]:
    """Renew `lock` while the block runs (until released); release it however the block ends.

    A lock can be lost while held: its key expired while Redis could not be reached for longer
    than the TTL, or Redis restarted without its data. The next renewal notices, logs `lock.lost`
    once and stops (the token can never be ours again). The block is not interrupted: it runs to
    its end, and until then another holder may take the lock. The release at the end is a
    compare-and-delete, so it never removes that other holder's lock.
    """
    held = Held(manager, lock)

    async def renew_until_released() -> None:
        while not held.released:
            await anyio.sleep(manager.ttl / 3)
            if held.released:
                return
            try:
                if not await manager.renew(lock):
                    log.warning("lock.lost", lock=lock.name)
                    return
            except (RedisError, OSError) as exc:
                log.warning("lock.renew_failed", lock=lock.name, error=type(exc).__name__)

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(renew_until_released)
            try:
                yield held
            finally:
                group.cancel_scope.cancel()
    finally:
        await held.release()
