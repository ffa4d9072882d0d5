"""Active API keys remembered by hash for a few seconds, so a request with a known key costs no
database round trip and no pool checkout.

The bound is the point: a revoked key is refused on every replica within AUTH_CACHE_SECONDS
(default 5) of the revocation, and the cache never holds more than AUTH_CACHE_SIZE keys. Unknown
or revoked keys are never cached, so a key created a moment ago works at once.
"""

from __future__ import annotations

import time
import uuid


class KeyCache:
    def __init__(self, ttl_seconds: float, max_entries: int) -> None:
        self.ttl, self.max_entries = ttl_seconds, max_entries
        self._entries: dict[str, tuple[float, uuid.UUID, str]] = {}  # insertion order = age
        self._active: dict[uuid.UUID, float] = {}  # key id -> until when it is known to be active

    def get(self, key_hash: str) -> tuple[uuid.UUID, str] | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        expires, key_id, name = entry
        if expires <= time.monotonic():
            del self._entries[key_hash]
            return None
        return key_id, name

    def put(self, key_hash: str, key_id: uuid.UUID, name: str) -> None:
        if self.ttl <= 0:
            return
        self._entries.pop(key_hash, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest
        self._entries[key_hash] = (time.monotonic() + self.ttl, key_id, name)
        self.vouch(key_id)

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
