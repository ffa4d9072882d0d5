"""A message sent while a turn of its conversation runs, with `multitask: "enqueue"`: stored at once,
answered after the running turn, in arrival order, on whichever replica received it.

The message waits in `queued_messages` (not in `messages`: the history stays in turn order), its
UUIDv7 id its place in line. Its request becomes a run owned by the app (so a client that leaves
does not lose its turn): the run polls the conversation's lock with backoff, no connection held
between polls, and goes once it holds the lock and no older queued message of the conversation still
waits. Its turn's phase 1 stores the user's message with a fresh id and removes the queued row in the
same statement (`TurnOptions.dequeue`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import structlog
from redis.exceptions import RedisError
from sqlalchemy import delete, insert, select

from app.core.errors import AppError
from app.core.locks import Lock
from app.models import QueuedMessage
from app.runs.manager import Run
from app.state import Resources
from app.turns.turn import Turn

log = structlog.get_logger(__name__)

# The lock is polled on Redis (a SET NX); the database is asked only once it is taken.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.25
AHEAD_LIMIT = 100  # queued messages ahead looked at per check (live ones come first in practice)


@dataclass(slots=True)
class Queued:
    """A queued request's run, and (once its turn has run) the turn or the error it ended with."""

    run: Run
    queued_id: uuid.UUID
    turn: Turn | None = None
    error: AppError | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


async def enqueue(resources: Resources, owner_id: uuid.UUID, conversation_id: uuid.UUID, message: str) -> uuid.UUID:
    """Store the message in the conversation's queue (one statement, committed): its id."""
    query = (
        insert(QueuedMessage)
        .values(owner_id=owner_id, conversation_id=conversation_id, content=message)
        .returning(QueuedMessage.id)
    )
    async with resources.db.statement() as conn:
        queued_id: uuid.UUID = (await conn.execute(query)).scalar_one()
    return queued_id


async def waiting(
    resources: Resources, owner_id: uuid.UUID, conversation_id: uuid.UUID, before: uuid.UUID | None = None
) -> bool:
    """Whether a queued message of the conversation (older than `before`) still waits for its turn:
    its run is alive, here or on a replica whose lease holds. One whose replica stopped is skipped:
    it stays stored, but does not hold up the messages behind it."""
    query = select(QueuedMessage.id).where(
        QueuedMessage.conversation_id == conversation_id, QueuedMessage.owner_id == owner_id
    )
    if before is not None:
        query = query.where(QueuedMessage.id < before)
    async with resources.db.statement() as conn:
        ahead = list((await conn.execute(query.order_by(QueuedMessage.id).limit(AHEAD_LIMIT))).scalars())
    runs = resources.runs
    here = {r for r in ahead if r in runs.runs and not runs.runs[r].finished}
    if here or not ahead:
        return bool(here)
    if runs.leases is None:  # one process: a queued message not running here is from before a restart
        return False
    try:
        return bool(await runs.leases.alive(ahead))
    except (RedisError, OSError) as exc:
        log.warning("chat.degraded", feature="queue_liveness", error=type(exc).__name__)
        return True  # cannot tell: keep the order


async def dequeue(resources: Resources, queued_id: uuid.UUID) -> None:
    async with resources.db.statement() as conn:
        await conn.execute(delete(QueuedMessage).where(QueuedMessage.id == queued_id))


async def forget(resources: Resources, queued_id: uuid.UUID) -> None:
    """Out of the queue, for a turn that was refused (its client told why); a failure only logged."""
    try:
        await dequeue(resources, queued_id)
    except Exception as exc:
        log.warning("chat.queue.forget_failed", queued_id=str(queued_id), error=type(exc).__name__)


async def wait_turn(
    resources: Resources,
    owner_id: uuid.UUID,
    conversation_id: uuid.UUID,
    queued_id: uuid.UUID,
    acquire: Callable[[], Awaitable[Lock | None]],
    busy: Lock,
) -> Lock | None:
    """The conversation's lock (`acquire`: it, `busy` if held, None if Redis is down), once this
    queued message is the conversation's next."""
    pause = FIRST_POLL_SECONDS
    while True:
        lock = await acquire()
        if lock is not busy:
            try:
                if not await waiting(resources, owner_id, conversation_id, before=queued_id):
                    return lock
            except BaseException:
                if lock is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(2):
                        await resources.locks.release(lock)
                raise
            if lock is not None:  # an earlier message goes first
                await resources.locks.release(lock)
        await anyio.sleep(pause)
        pause = min(pause * 2, MAX_POLL_SECONDS)
