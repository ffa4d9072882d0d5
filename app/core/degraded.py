"""Redis-backed features step aside when Redis is down; chat goes on (documented)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar

import structlog
from redis.exceptions import RedisError

log = structlog.get_logger(__name__)
T = TypeVar("T")


async def degraded(call: Awaitable[T], fallback: T, feature: str) -> T:
    """Redis-backed features step aside when Redis is down; chat goes on (documented)."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        log.warning("chat.degraded", feature=feature, error=type(exc).__name__)
        return fallback
