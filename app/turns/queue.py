"""A message sent while a turn of its conversation runs, with `multitask: "enqueue"`: stored at once,
answered after the running turn, in arrival order, on whichever replica received it.

The message waits in `queued_messages` (not in `messages`: the history stays in turn order), its
UUIDv7 id its place in line. Its request becomes a run owned by the app (so a client that leaves
does not lose its turn): the run polls the conversation's lock with backoff, no connection held
between polls, and goes once it holds the lock and no older queued message of the conversation still
waits. Its turn's phase 1 stores the user's message with a fresh id and removes the queued row in the
same statement (`TurnOptions.dequeue`).

A queued message whose run stopped with its replica (killed, or drained before its turn) is adopted:
another replica claims it on Redis (one wins), and starts a run under the same id that answers it in
its place in line. Every replica sweeps the queue for such orphans now and then, and a run waiting
behind one adopts it on the spot; until then the orphan holds its place (nothing behind it goes first).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

import anyio
import structlog
from sqlalchemy import delete, insert, select

from app.core.errors import AppError
from app.core.locks import Lock
from app.core.periodic import periodically
from app.llm.base import Block
from app.models import ApiKey, QueuedMessage
from app.runs.manager import Run
from app.state import Resources
from app.turns.errors import NoLongerQueued
from app.turns.turn import Turn

log = structlog.get_logger(__name__)

# The lock is polled on Redis (a SET NX); the database is asked only once it is taken.
FIRST_POLL_SECONDS = 0.05
MAX_POLL_SECONDS = 0.25
AHEAD_LIMIT = 100  # queued messages ahead looked at per check
SWEEP_PAGE = 500  # queued messages the sweep reads per statement (one, unless the queue is long)

# Claim a queued message whose run is alive nowhere, for this replica (1), or not (0), in one step.
# KEYS: the running runs' hash, the run's settle claim (app/runs/leases.py's key: settling and adopting
# exclude each other), its event log. ARGV: the run id, the replicas' lease key prefix, this replica,
# how long the claim holds (ms; by then the adopted run is registered, and alive while it runs).
ADOPT = """
local where = redis.call('HGET', KEYS[1], ARGV[1])
if where and redis.call('EXISTS', ARGV[2] .. where) == 1 then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and (string.sub(holder, 1, 6) == 'adopt:' or where) then return 0 end
redis.call('SET', KEYS[2], 'adopt:' .. ARGV[3], 'PX', ARGV[4])
redis.call('DEL', KEYS[3])
return 1
"""
# Above: alive (listed on a replica whose lease holds) is not an orphan; a claim held by another adopter,
# or by a settler still closing the dead run's log (it is still listed), wins. The dead run's log (its
# `queued` event, perhaps a settler's `interrupted`) goes: the adopted run writes its own from the start.


FAILED_FOR_NOW = (
    "The message's turn could not start (the service was unavailable): it stays queued, and a replica answers it"
    " in its place shortly. Follow GET /runs/{queued_id}/events, or read the conversation."
)


class StaysQueued(AppError):
    status_code, type = 503, "stays_queued"
    default_message = (
        "This replica stopped before the message's turn: it stays queued, and another replica (or this one,"
        " restarted) answers it in its place. Follow GET /runs/{queued_id}/events, or read the conversation."
    )


@dataclass(slots=True)
class Queued:
    """A queued request's run, and (once its turn has run) the turn or the error it ended with."""

    run: Run
    queued_id: uuid.UUID
    turn: Turn | None = None
    error: AppError | None = None
    done: anyio.Event = field(default_factory=anyio.Event)


@dataclass(frozen=True, slots=True)
class Orphan:
    """A queued message whose run stopped with its replica: what answering it needs."""

    id: uuid.UUID
    owner_id: uuid.UUID
    conversation_id: uuid.UUID
    content: str
    allowed_agents: tuple[str, ...] | None  # its key's (None: all)
    blocks: list[Block] | None = None  # the turn as the client sent it, when more than its text


Adopt = Callable[[list[uuid.UUID]], Awaitable[object]]


async def enqueue(
    resources: Resources,
    owner_id: uuid.UUID,
    conversation_id: uuid.UUID,
    message: str,
    blocks: list[Block] | None = None,
) -> uuid.UUID:
    """Store the message (and its blocks: its attachments' references, then its text) in the
    conversation's queue (one statement, committed): its id."""
    query = (
        insert(QueuedMessage)
        .values(owner_id=owner_id, conversation_id=conversation_id, content=message, blocks=blocks)
        .returning(QueuedMessage.id)
    )
    async with resources.db.statement() as conn:
        queued_id: uuid.UUID = (await conn.execute(query)).scalar_one()
    return queued_id


async def _line(
    resources: Resources, owner_id: uuid.UUID, conversation_id: uuid.UUID, upto: uuid.UUID | None
) -> tuple[list[uuid.UUID], bool]:
    """The conversation's queued messages older than `upto` (all without it), and whether `upto` is
    still queued: one indexed statement."""
    query = select(QueuedMessage.id).where(
        QueuedMessage.conversation_id == conversation_id, QueuedMessage.owner_id == owner_id
    )
    if upto is not None:
        query = query.where(QueuedMessage.id <= upto)
    async with resources.db.statement() as conn:
        found = list((await conn.execute(query.order_by(QueuedMessage.id).limit(AHEAD_LIMIT + 1))).scalars())
    ahead = [q for q in found if q != upto]
    # Past the limit `upto` is not in the page: more than AHEAD_LIMIT ahead, so it is still queued.
    return ahead, upto is None or upto in found or len(found) > AHEAD_LIMIT


async def waiting(
    resources: Resources, owner_id: uuid.UUID, conversation_id: uuid.UUID, before: uuid.UUID | None = None
) -> bool:
    """Whether a queued message of the conversation (older than `before`) still waits for its turn:
    every stored one does, running or about to be adopted (its place in line is kept)."""
    ahead, _ = await _line(resources, owner_id, conversation_id, before)
    return bool(ahead)


def _adoptable_below(resources: Resources) -> uuid.UUID:
    """Queued ids below this one (UUIDv7: by time) were stored longer than a lease ago: their run has
    long been registered, so one alive nowhere has stopped (a younger one may not be registered yet)."""
    ms = int((time.time() - resources.settings.run_lease_seconds) * 1000)
    return uuid.UUID(int=ms << 80)


def _running_here(resources: Resources, queued_id: uuid.UUID) -> bool:
    run = resources.runs.runs.get(queued_id)
    return run is not None and not run.finished


async def stranded(resources: Resources, queued_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Of these queued messages, the ones whose run is alive nowhere (old enough to tell), in order.
    Without Redis (one process): those not running here, left from before a restart. Redis errors go
    to the caller."""
    below = _adoptable_below(resources)
    candidates = [q for q in queued_ids if q < below and not _running_here(resources, q)]
    leases = resources.runs.leases
    if not candidates or leases is None:
        return candidates
    alive = await leases.alive(candidates)
    return [q for q in candidates if q not in alive]


async def claim(resources: Resources, queued_id: uuid.UUID) -> bool:
    """The right to run this orphan's turn here: one replica (one caller) wins. The caller starts its
    run before its next await, so that without Redis the check and the start are one step."""
    leases = resources.runs.leases
    if leases is None:
        return not _running_here(resources, queued_id)
    prefix = leases.prefix  # the keys of app/runs/leases.py
    keys = (leases.running_key, f"{prefix}settle:{queued_id}", f"{prefix}run:{queued_id}:events")
    args = (str(queued_id), f"{prefix}replica:", leases.replica_id, 2 * leases.lease_ms)
    return bool(await leases.redis.eval(ADOPT, len(keys), *keys, *args))


async def orphans(resources: Resources, queued_ids: Sequence[uuid.UUID]) -> list[Orphan]:
    """What answering these queued messages needs (one statement), oldest first; gone ones left out."""
    query = (
        select(
            QueuedMessage.id,
            QueuedMessage.owner_id,
            QueuedMessage.conversation_id,
            QueuedMessage.content,
            ApiKey.agents,
            QueuedMessage.blocks,
        )
        .join(ApiKey, ApiKey.id == QueuedMessage.owner_id)
        .where(QueuedMessage.id.in_(queued_ids))
        .order_by(QueuedMessage.id)
    )
    async with resources.db.statement() as conn:
        rows = (await conn.execute(query)).all()
    return [Orphan(r[0], r[1], r[2], r[3], tuple(r[4]) if r[4] is not None else None, r[5]) for r in rows]


async def sweep(resources: Resources, adopt: Adopt) -> None:
    """One pass: the queued messages whose run is alive nowhere, adopted. One indexed statement when
    nothing is queued (or all is younger than a lease); then Redis, for the runs' liveness."""
    if resources.lifecycle.draining:
        return  # its runs are about to stop: others adopt
    after: uuid.UUID | None = None
    below = _adoptable_below(resources)
    while True:
        query = select(QueuedMessage.id).where(QueuedMessage.id < below)
        if after is not None:
            query = query.where(QueuedMessage.id > after)
        async with resources.db.statement() as conn:
            page = list((await conn.execute(query.order_by(QueuedMessage.id).limit(SWEEP_PAGE))).scalars())
        if page and (found := await stranded(resources, page)):
            await adopt(found)
        if len(page) < SWEEP_PAGE:
            return
        after = page[-1]


def adoption_sweeps(resources: Resources, adopt: Adopt, every: float) -> AbstractAsyncContextManager[None]:
    """While the app runs: every `every` seconds (at once first: what a restart left), orphans adopted."""
    return periodically(lambda: sweep(resources, adopt), every, failed="chat.queue.sweep_failed")


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
    adopt: Adopt,
) -> Lock | None:
    """The conversation's lock (`acquire`: it, `busy` if held, None if Redis is down), once this
    queued message is the conversation's next; orphans ahead of it adopted (`adopt`) on the way.
    NoLongerQueued if another run has answered it meanwhile (checked under the lock its phase 1 takes:
    two runs of one message never both store it); StaysQueued if its replica drains first."""
    pause, drained_at = FIRST_POLL_SECONDS, None
    while True:
        if resources.lifecycle.draining:  # its turn has the drain's grace to come, then another replica's
            drained_at = drained_at if drained_at is not None else anyio.current_time()
            if anyio.current_time() - drained_at >= resources.lifecycle.grace_seconds:
                raise StaysQueued()
        lock = await acquire()
        if lock is not busy:
            try:
                ahead, still_queued = await _line(resources, owner_id, conversation_id, queued_id)
                if not still_queued:
                    raise NoLongerQueued()
                if not ahead:
                    return lock
            except BaseException:
                if lock is not None:
                    with anyio.move_on_after(2, shield=True):
                        await resources.locks.release(lock)
                raise
            if lock is not None:  # an earlier message goes first
                await resources.locks.release(lock)
            try:
                if found := await stranded(resources, ahead):
                    await adopt(found)
            except Exception as exc:  # Redis or the database down a while: this run waits on, the sweep retries
                log.warning("chat.queue.adopt_failed", queued_id=str(queued_id), error=type(exc).__name__)
        await anyio.sleep(pause)
        pause = min(pause * 2, MAX_POLL_SECONDS)
