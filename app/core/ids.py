"""Time-ordered UUIDs (version 7, RFC 9562): primary keys that sort by creation time."""

from __future__ import annotations

import os
import threading
import time
import uuid

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def created_ms(value: uuid.UUID) -> int | None:
    """When a UUIDv7 was taken, in ms since the epoch (by its process's clock); None for another version."""
    return value.int >> 80 if value.version == 7 else None


def uuid7() -> uuid.UUID:
    """A UUIDv7, strictly increasing within this process (a 12-bit counter breaks ties)."""
    global _last_ms, _counter
    with _lock:
        now = time.time_ns() // 1_000_000
        if now <= _last_ms:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
            now = _last_ms
        else:
            _last_ms = now
            _counter = int.from_bytes(os.urandom(2), "big") & 0x3FF  # room to count upwards
        ms, counter = now, _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand
    return uuid.UUID(int=value)
