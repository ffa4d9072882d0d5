"""CONVERSATION_RETENTION_DAYS: conversations untouched for longer are deleted, with their messages.

A sweep runs at start-up and then every RETENTION_SWEEP_SECONDS, on one replica at a time (a lock
from app/core/locks.py, renewed while it runs). It deletes in small batches, each its own short
transaction: the oldest conversations by `updated_at` (an index of its own), re-checked in the
DELETE, so a conversation a turn touched meanwhile stays; their messages go with them (ON DELETE
CASCADE). Between batches it yields, so it never holds locks for long nor starves the turns.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext
from datetime import timedelta

import anyio
import structlog
from redis.exceptions import RedisError
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.locks import LockManager, kept
from app.core.periodic import periodically
from app.models import Conversation
from app.models.base import utcnow

log = structlog.get_logger(__name__)

BATCH = 20  # conversations per statement (their messages go with them)
PAUSE = 0.05  # seconds between batches
LOCK = "retention"


async def sweep_retention(
    sessions: async_sessionmaker[AsyncSession], locks: LockManager, days: int, *, batch: int = BATCH
) -> int | None:
    """One sweep: how many conversations it deleted; None if another replica is sweeping."""
    try:
        lock = await locks.acquire(LOCK)
    except (RedisError, OSError) as exc:
        log.warning("retention.lock_unavailable", error=type(exc).__name__)
        return None
    if lock is None:
        return None
    deleted = 0
    async with kept(locks, lock):
        cutoff = utcnow() - timedelta(days=days)
        stale = Conversation.updated_at < cutoff
        while True:
            oldest = select(Conversation.id).where(stale).order_by(Conversation.updated_at).limit(batch)
            async with sessions() as session, session.begin():
                result = await session.execute(
                    delete(Conversation).where(Conversation.id.in_(oldest.scalar_subquery()), stale)
                )
            count = int(getattr(result, "rowcount", 0) or 0)
            deleted += count
            if count < batch:
                break
            await anyio.sleep(PAUSE)
    if deleted:
        log.info("retention.deleted", conversations=deleted, older_than_days=days)
    return deleted


def retention_sweeps(
    sessions: async_sessionmaker[AsyncSession], locks: LockManager, days: int | None, every: float
) -> AbstractAsyncContextManager[None]:
    """While the app runs: a sweep now and then; nothing when retention is off."""
    if days is None:
        return nullcontext()
    return periodically(lambda: sweep_retention(sessions, locks, days), every, failed="retention.sweep_failed")
