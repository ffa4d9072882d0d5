"""Active API keys remembered by hash for a few seconds, so a request with a known key costs no
database round trip and no pool checkout.

The bound is the point: a revoked key is refused on every replica within AUTH_CACHE_SECONDS
(default 5) of the revocation, and the cache never holds more than AUTH_CACHE_SIZE keys. Unknown
or revoked keys are never cached, so a key created a moment ago works at once.

A key that is not cached is read once however many requests want it at that moment (a burst on
a fresh replica, or the moment an entry expires under load): the others wait for that read
rather than each taking a pooled connection for the same row.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

# The key's id, name, and the agents it may use (None: all of them).
Found = tuple[uuid.UUID, str, tuple[str, ...] | None]


class KeyCache:
    def __init__(self, ttl_seconds: float, max_entries: int) -> None:
        self.ttl, self.max_entries = ttl_seconds, max_entries
        self._entries: dict[str, tuple[float, Found]] = {}  # insertion order = age
        self._active: dict[uuid.UUID, float] = {}  # key id -> until when it is known to be active
        self._reading: dict[str, asyncio.Task[Found | None]] = {}  # key hash -> the read in flight

    async def get_or_read(self, key_hash: str, read: Callable[[], Awaitable[Found | None]]) -> Found | None:
        """The cached key, or `read()`'s answer, one read shared by every caller meanwhile (and
        cached if the key is active). A caller that leaves does not cut the others' read short."""
        found = self.get(key_hash)
        if found is not None:
            return found
        task = self._reading.get(key_hash)
        if task is None:
            task = asyncio.create_task(self._read(key_hash, read), name="auth.read_key")
            self._reading[key_hash] = task  # owned here until it is done (then it removes itself)
            task.add_done_callback(lambda _: self._reading.pop(key_hash, None))
        return await asyncio.shield(task)

    async def _read(self, key_hash: str, read: Callable[[], Awaitable[Found | None]]) -> Found | None:
        found = await read()
        if found is not None:
            self.put(key_hash, found)
        return found

    def get(self, key_hash: str) -> Found | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires, found = entry
        if expires <= time.monotonic():
            del self._entries[key_hash]
            return None
        return found

    def put(self, key_hash: str, found: Found) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(key_hash, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest
        self._entries[key_hash] = (time.monotonic() + self.ttl, found)
        self.vouch(found[0])

    def vouch(self, key_id: uuid.UUID) -> None:
        """The key was just seen active (read from the database)."""
        if self.ttl > 0:
            if len(self._active) >= self.max_entries:
                del self._active[next(iter(self._active))]
            self._active[key_id] = time.monotonic() + self.ttl

    def known_active(self, key_id: uuid.UUID) -> bool:
        """True while the key was seen active less than `ttl` ago: no need to look again."""
        until = self._active.get(key_id)
        return until is not None and until > time.monotonic()

    def clear(self) -> None:
        self._entries.clear()
        self._active.clear()
