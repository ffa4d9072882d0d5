"""Starting a turn, for every door (`POST /chat`, the OpenAI-compatible routes).

The service knows nothing of wire formats. It applies what every turn goes through — drain,
admission, the token quota, the Idempotency-Key, the conversation lock — stores the user's
message (phase 1, in a transaction from the door's opener), and hands back a `Turn` ready to
execute, or the stored response a retry replays. A door validates its input, calls `start`, and
renders the turn's events its own way.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

import anyio
import structlog
from fastapi import Depends, Request
from redis.exceptions import RedisError

from app.agent.loop import Agent, Decision, Transcript
from app.agent.tools.base import ToolContext
from app.auth.errors import TokenQuotaExceeded, TooManyTurns
from app.conversations.errors import ConversationBusy, ConversationNotFound
from app.core import telemetry
from app.core.db import Transactions
from app.core.degraded import degraded
from app.core.errors import (
    AppError,
    PayloadTooLarge,
    ServiceBusy,
    ServiceUnavailable,
    ShuttingDown,
    envelope,
    is_db_unavailable,
)
from app.core.locks import Lock, LockManager
from app.files.attach import has_attachments, with_files
from app.models.conversations import MessageStatus
from app.runs.manager import Run
from app.state import Resources, resources_of
from app.turns import multitask, queue
from app.turns.approvals import (
    PAUSED_TRACE,
    CallOptions,
    Paused,
    claim_paused,
    continuation_run_id,
    keep_paused_trace,
    unclaim,
)
from app.turns.begin import AgentChoice, TurnOptions, TurnStarted, begin_turn
from app.turns.errors import IdempotencyInProgress, IdempotencyKeyReused, NoLongerQueued, ToolResultUnmatched
from app.turns.gate import KeyGate
from app.turns.idempotency import Claim, fingerprint
from app.turns.queue import Queued
from app.turns.run import RunPublisher, as_run
from app.turns.store import TurnRepository
from app.turns.turn import Resumption, Turn, TurnEvent, TurnFailed

log = structlog.get_logger(__name__)

# Every error `start` can raise, for the doors' OpenAPI declarations.
START_ERRORS = (
    ShuttingDown,
    ServiceBusy,
    PayloadTooLarge,
    TokenQuotaExceeded,
    TooManyTurns,
    IdempotencyKeyReused,
    IdempotencyInProgress,
    ConversationBusy,
)


@dataclass(frozen=True, slots=True)
class TurnRequest:
    owner_id: uuid.UUID
    message: str
    conversation_id: uuid.UUID | None = None
    system: str | None = None
    # True when the caller follows the events as they happen (a run); False when it waits for the outcome.
    incremental: bool = False
    idempotency_key: str | None = None
    # What a retry with the same Idempotency-Key must repeat exactly (the door's own view of its body).
    fingerprint: dict[str, Any] | None = None
    options: TurnOptions = TurnOptions()  # blocks, the caller's history and tools, where to continue…
    # The key stored with this turn's answer: how the caller's next call will find the conversation.
    history_key: Callable[[Turn], str | None] | None = None
    # The agent the turn names (None: the conversation's, or the default for a new one), and the
    # agents the caller's key may use (None: all).
    agent: str | None = None
    allowed_agents: tuple[str, ...] | None = None
    # While another turn of the conversation runs: "reject" (409), "interrupt" it (app/turns/multitask.py),
    # or "enqueue" this one after it (app/turns/queue.py; only through `enqueue`, which has a publisher).
    multitask: Literal["reject", "interrupt", "enqueue"] = "reject"


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    """Decisions on a paused turn's pending calls (POST /conversations/{id}/approvals)."""

    owner_id: uuid.UUID
    conversation_id: uuid.UUID
    decisions: list[Decision]
    incremental: bool = False
    idempotency_key: str | None = None
    fingerprint: dict[str, Any] | None = None
    allowed_agents: tuple[str, ...] | None = None
    # The paused answer the caller means (None: the conversation's), and the door's attributes kept
    # for this continuation (the Responses door's request fields: its response is the continuation).
    message_id: uuid.UUID | None = None
    attributes: dict[str, Any] | None = None
    calls: CallOptions | None = None  # the continuing request's tools, instructions… (None: the conversation's)


@dataclass(frozen=True, slots=True)
class Replay:
    """An Idempotency-Key retry of a finished turn: the response the door stored the first time."""

    response: dict[str, Any]


BUSY = Lock("busy", "")


class _QueueTurn(Exception):
    """Raised inside `_opened` when an "enqueue" turn must wait: its claims are undone, then it queues."""

    def __init__(self, conversation_id: uuid.UUID) -> None:
        self.conversation_id = conversation_id


async def acquire_conversation(locks: LockManager, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> Lock | None:
    """The conversation's turn lock; BUSY if another turn holds it; None if Redis is down (degraded)."""
    # Keyed by owner too: another owner's id finds a different lock, and then a 404.
    try:
        return await locks.acquire(f"conversation:{owner_id}:{conversation_id}") or BUSY
    except (RedisError, OSError) as exc:
        log.warning("chat.degraded", feature="conversation_lock", error=type(exc).__name__)
        return None


class TurnService:
    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.settings = resources.settings

    async def start(
        self, request: TurnRequest, transactions: Transactions, respond: Callable[[Turn], dict[str, Any]]
    ) -> Turn | Replay:
        """Phase 1 and everything before it, in transactions from the door's opener (the turn keeps
        it for phase 3). `respond` renders a finished turn for idempotent replays."""
        started = await self._start(request, transactions, respond, None)
        assert not isinstance(started, Queued)  # only with a publisher
        return started

    async def enqueue(
        self,
        request: TurnRequest,
        transactions: Transactions,
        respond: Callable[[Turn], dict[str, Any]],
        publisher: RunPublisher,
    ) -> Turn | Replay | Queued:
        """As `start`; with `multitask: "enqueue"` and another turn (or queued message) ahead, the
        message is queued and its turn runs later in a run published with `publisher` (Queued)."""
        return await self._start(request, transactions, respond, publisher)

    async def _start(
        self,
        request: TurnRequest,
        transactions: Transactions,
        respond: Callable[[Turn], dict[str, Any]],
        publisher: RunPublisher | None,
    ) -> Turn | Replay | Queued:
        owner, settings = request.owner_id, self.settings
        self._admit()
        if len(request.message) > settings.max_message_chars:
            raise PayloadTooLarge(f"The message is longer than {settings.max_message_chars} characters.")
        catalog, allowed = self.resources.agents, request.allowed_agents
        named = catalog.resolve(request.agent, allowed) if request.agent is not None else None
        agents = AgentChoice(catalog, named, allowed)
        await self._check_quota(owner)
        key = request.idempotency_key
        fp = fingerprint(request.fingerprint or {}) if key is not None else ""
        if key is not None and (replay := await self._claim_key(owner, key, fp)) is not None:
            return replay

        options = request.options

        async def conversation() -> uuid.UUID | None:
            nonlocal options
            if request.conversation_id is not None:
                return request.conversation_id
            found, below = await self._continues(owner, options, transactions, agents)
            if below is not None:  # a client's resent history ends with this answer: its branch goes on
                options = dataclasses.replace(options, after=below)
            return found

        async def phase_1_in(
            transactions: Transactions,
            conversation_id: uuid.UUID | None,
            *,
            overlap: bool = True,
            dequeue: uuid.UUID | None = None,
        ) -> TurnStarted:
            started = await begin_turn(
                transactions,
                settings,
                owner,
                agents=agents,
                message=request.message,
                conversation_id=conversation_id,
                system=request.system,
                incremental=request.incremental,
                options=dataclasses.replace(options, dequeue=dequeue) if dequeue else options,
                # Only when no other turn is running: the overlap spends idle time on latency, and
                # when the loop has other turns' work for that wait, its extra task costs throughput.
                overlap=overlap and self.resources.lifecycle.in_flight == 0,
            )
            return await self._fitting(started, owner)

        phase_1 = functools.partial(phase_1_in, transactions)
        interrupt = request.multitask == "interrupt"
        enqueue = publisher is not None and request.multitask == "enqueue"
        try:
            started, lock, slot = await self._opened(
                owner, key, conversation, phase_1, interrupt=interrupt, enqueue=enqueue
            )
        except _QueueTurn as wait:
            assert publisher is not None
            return await self._queued(request, wait.conversation_id, phase_1_in, publisher)
        turn = self._turn(started, transactions, owner, gated_offered=request.options.approvals, lock=lock)
        turn.history_key = request.history_key
        self._settle_claims(turn, owner, slot, key, fp, respond)
        return turn

    async def resume(
        self, request: ResumeRequest, transactions: Transactions, respond: Callable[[Turn], dict[str, Any]]
    ) -> Turn | Replay:
        """A paused turn, continued with decisions on its pending calls: the same turn (its answer
        keeps its id), as `start` would run it, on whichever replica receives the decisions."""
        owner = request.owner_id
        self._admit()
        agents = AgentChoice(self.resources.agents, None, request.allowed_agents)
        await self._check_quota(owner)
        key = request.idempotency_key
        fp = fingerprint(request.fingerprint or {}) if key is not None else ""
        if key is not None and (replay := await self._claim_key(owner, key, fp)) is not None:
            return replay
        paused: list[Paused] = []

        async def conversation() -> uuid.UUID | None:
            return request.conversation_id

        async def phase_1(conversation_id: uuid.UUID | None) -> TurnStarted:
            assert conversation_id is not None
            found = await claim_paused(
                transactions,
                self.settings,
                owner,
                conversation_id,
                request.decisions,
                agents,
                incremental=request.incremental,
                message_id=request.message_id,
                response=request.attributes,
                calls=request.calls,
            )
            text_only = self.settings.file_text_only_models
            try:
                started = await with_files(
                    found.started, self.resources.files, owner_id=owner, text_only_models=text_only
                )
            except BaseException:
                # The turn cannot run: the pause goes back as it was, for the decisions to be sent again.
                with anyio.move_on_after(5, shield=True):
                    await unclaim(transactions, found)
                raise
            paused.append(found)
            return started

        started, lock, slot = await self._opened(owner, key, conversation, phase_1)
        turn = self._turn(started, transactions, owner, gated_offered=True, lock=lock)
        found = paused[0]
        # The transcript's usage grows from the paused answer's; `before` keeps where it was (a copy).
        turn.transcript = Transcript(blocks=list(found.content), usage=dataclasses.replace(found.usage))
        turn.resume = Resumption(
            found.pending,
            request.decisions,
            at=len(found.content),
            segment=found.segment,
            created_at=found.claimed_at,
            before=found.usage,
            traceparent=(found.attributes or {}).get(PAUSED_TRACE),
        )
        self._settle_claims(turn, owner, slot, key, fp, respond)
        return turn

    def _admit(self) -> None:
        resources, settings = self.resources, self.settings
        if resources.lifecycle.draining:
            raise ShuttingDown()
        if settings.admission_max_loop_lag and resources.loop_lag.latest > settings.admission_max_loop_lag:
            # The loop cannot keep up: refuse now, cheaply, before this turn takes a connection it
            # would hold through a slow loop (and time out at the pool seconds later).
            resources.metrics.admission_refusals.inc()
            log.warning("chat.admission_refused", loop_lag_s=round(resources.loop_lag.latest, 3))
            raise ServiceBusy()

    async def _check_quota(self, owner: uuid.UUID) -> None:
        quota = await degraded(self.resources.limits.check_tokens(owner), None, "token_quota")
        if quota is not None and not quota.allowed:
            log.info("limits.refused", limit="tokens_per_day")
            self.resources.metrics.limit_refusals.labels("tokens_per_day").inc()
            raise TokenQuotaExceeded(headers=quota.headers())

    async def _claim_key(self, owner: uuid.UUID, key: str, fp: str) -> Replay | None:
        """The Idempotency-Key claimed for this request, or the stored response a retry replays."""
        ttl = self.settings.turn_timeout + 60
        claim = await degraded(self.resources.idempotency.claim(owner, key, fp, ttl), Claim("new"), "idempotency")
        if claim.outcome == "mismatch":
            raise IdempotencyKeyReused()
        if claim.outcome == "running":
            raise IdempotencyInProgress()
        if claim.outcome == "replay":
            assert claim.response is not None
            self.resources.metrics.idempotent_replays.inc()
            return Replay(claim.response)
        return None

    async def _opened(
        self,
        owner: uuid.UUID,
        key: str | None,
        conversation: Callable[[], Awaitable[uuid.UUID | None]],
        phase_1: Callable[[uuid.UUID | None], Awaitable[TurnStarted]],
        *,
        interrupt: bool = False,
        enqueue: bool = False,
    ) -> tuple[TurnStarted, Lock | None, uuid.UUID | None]:
        """A turn slot, the conversation's lock, then phase 1; every claim undone if any of it fails."""
        resources = self.resources
        lock: Lock | None = None
        slot: uuid.UUID | None = None
        try:
            slot = await self._take_slot(owner)
            conversation_id = await conversation()
            if conversation_id is not None:
                lock = await acquire_conversation(resources.locks, owner, conversation_id)
                if lock is BUSY and interrupt:
                    lock = await self._interrupt(owner, conversation_id)
                if enqueue and (lock is BUSY or await queue.waiting(resources, owner, conversation_id)):
                    lock = None if lock is BUSY else lock  # ours (released below) or not ours
                    raise _QueueTurn(conversation_id)
                if lock is BUSY:
                    lock = None  # not ours to release
                    log.info("chat.conversation_busy", conversation_id=str(conversation_id))
                    resources.metrics.lock_conflicts.inc()
                    raise ConversationBusy()
            return await phase_1(conversation_id), lock, slot
        except BaseException:
            # Undo the claims, even on cancellation (shielded, bounded); then let the error go on.
            with anyio.move_on_after(2, shield=True):
                if slot is not None:
                    await degraded(resources.limits.release_turn(owner, slot), None, "turns_in_flight")
                if lock is not None:
                    await degraded(resources.locks.release(lock), None, "conversation_lock")
                if key is not None:
                    await degraded(resources.idempotency.abandon(owner, key), None, "idempotency")
            raise

    def _turn(
        self,
        started: TurnStarted,
        transactions: Transactions,
        owner: uuid.UUID,
        *,
        gated_offered: bool,
        lock: Lock | None,
    ) -> Turn:
        resources, settings, metrics = self.resources, self.settings, self.resources.metrics
        context = ToolContext(
            owner_id=owner,
            conversation_id=started.conversation_id,
            settings=settings,
            sessions=resources.sessions,
            http=resources.http,
            message_id=started.message_id,  # what a memory written in this turn records as its source
        )
        agent = Agent(
            started.agent.llm,
            started.agent.tools,
            settings,
            metrics,
            KeyGate(resources, owner),
            max_steps=started.agent.max_steps,
            name=started.agent.name,
            gated_offered=gated_offered,
        )
        held = (resources.locks, lock) if lock is not None else None
        turn = Turn(started, agent, context, transactions, settings, resources.lifecycle, metrics, lock=held)
        if has_attachments(started.request.messages):
            # Attached files' content is read as the turn's first step: a storage failure is then the
            # turn's (its answer recorded `error`, the client told), not an answer left in progress.
            turn.prepare = functools.partial(
                with_files, storage=resources.files, owner_id=owner, text_only_models=settings.file_text_only_models
            )
        if telemetry.active() is not None:  # a paused turn keeps its trace for its continuation to link to

            async def keep_trace(done: Turn) -> None:
                if done.saved and done.status == MessageStatus.AWAITING_APPROVAL and done.traceparent is not None:
                    await keep_paused_trace(done.transactions, done.started.message_id, done.traceparent)

            turn.after_record.append(keep_trace)
        if resources.compactor is not None:  # once recorded: a compaction if its history grew past compact_at
            turn.after_record.append(resources.compactor.after_turn)
        return turn

    def _settle_claims(
        self,
        turn: Turn,
        owner: uuid.UUID,
        slot: uuid.UUID | None,
        key: str | None,
        fp: str,
        respond: Callable[[Turn], dict[str, Any]],
    ) -> None:
        """Once the turn is recorded: its slot back; its Idempotency-Key answered or given up."""
        limits = self.resources.limits
        if slot is not None:
            taken = slot

            async def free_slot(_: Turn) -> None:
                await limits.release_turn(owner, taken)

            turn.after_record.append(free_slot)
        if key is not None:
            idempotency = self.resources.idempotency

            async def settle_idempotency(done: Turn) -> None:
                if done.saved and done.status in (MessageStatus.COMPLETE, MessageStatus.AWAITING_APPROVAL):
                    await idempotency.complete(owner, key, fp, respond(done))
                else:
                    await idempotency.abandon(owner, key)  # a retry should run the turn again

            turn.after_record.append(settle_idempotency)

    async def _continues(
        self, owner: uuid.UUID, options: TurnOptions, transactions: Transactions, agents: AgentChoice
    ) -> tuple[uuid.UUID | None, uuid.UUID | None]:
        """The conversation a turn continues without naming it: one indexed, owner-scoped statement;
        and, found by history key, the answer the client's history ends with (the turn goes below it).

        After an answer (`options.after`) that is not this owner's: ConversationNotFound. By history
        key: the conversation of this turn's agent whose answer has that key, or None (the turn opens a
        new one: a client that switched models mid-chat starts a conversation with the other agent).
        By the client's own id for it (`options.external_id`): that conversation, or None (a new one
        under that id); and its answer with the history key, if any.
        """
        if options.after is None and options.extends_key is None and options.external_id is None:
            return None, None
        async with transactions() as tx:
            turns = TurnRepository(tx.conn)
            if options.external_id is not None:
                named = agents.named.name if agents.named is not None else None
                found = await turns.conversation_with_external_id(
                    options.external_id, owner_id=owner, agents=agents.filter(), rebind=named
                )
                if found is None or options.extends_key is None:
                    return found, None
                return found, await turns.answer_with_key(options.extends_key, conversation_id=found)
            if options.after is not None:
                results = [b["tool_use_id"] for b in options.content or () if b.get("type") == "tool_result"]
                if not results:
                    found = await turns.conversation_of_answer(options.after, owner_id=owner)
                else:  # the same lookup, with the calls the answer left open, which the results must answer
                    found, open_calls = await turns.open_calls_of_answer(options.after, owner_id=owner)
                    unmatched = next((r for r in results if r not in open_calls), None) if found else None
                    if unmatched is not None:
                        raise ToolResultUnmatched(unmatched)
                if found is None:
                    raise ConversationNotFound()
                return found, None
            assert options.extends_key is not None
            keyed = await turns.conversation_with_key(options.extends_key, owner_id=owner, agents=agents.filter())
            return keyed if keyed is not None else (None, None)

    async def _queued(
        self,
        request: TurnRequest,
        conversation_id: uuid.UUID,
        phase_1: Callable[..., Awaitable[TurnStarted]],
        publisher: RunPublisher,
    ) -> Queued:
        """The message stored in the conversation's queue now; its turn a run owned by the app that
        waits (no connection held) until it holds the lock and is next, then runs as a stream would."""
        resources, owner = self.resources, request.owner_id
        queued_id = await queue.enqueue(resources, owner, conversation_id, request.message, request.options.content)
        log.info("chat.turn.queued", conversation_id=str(conversation_id), queued_id=str(queued_id))
        # Not overlapped with the model call: its opener closes when phase 1 is done. Its statement
        # stores the user's message and removes the queued row, together.
        stored = functools.partial(phase_1, conversation_id=conversation_id, overlap=False, dequeue=queued_id)
        return await self._queued_run(
            owner,
            conversation_id,
            queued_id,
            stored,
            publisher,
            gated_offered=request.options.approvals,
            history_key=request.history_key,
        )

    async def adopt(self, queued_ids: list[uuid.UUID], publisher: RunPublisher) -> list[Queued]:
        """Queued messages whose run stopped with its replica (`queue.stranded`), each one's turn a run
        here under its queued id, as a queued turn runs (its place in line kept); one replica wins each
        (`queue.claim`). The message is stored and sent as the client sent it, attachments included
        (its blocks are in its queue row)."""
        resources, adopted = self.resources, list[Queued]()
        if resources.lifecycle.draining:
            return adopted  # its runs are about to stop: another replica adopts
        for orphan in await queue.orphans(resources, queued_ids):
            if not await queue.claim(resources, orphan.id):
                continue  # alive after all, or another replica's
            # No await between the claim and the run's start (without Redis, they are one step).
            log.warning("chat.queue.adopted", queued_id=str(orphan.id), conversation_id=str(orphan.conversation_id))
            stored = functools.partial(self._adopted_phase_1, orphan)
            adopted.append(
                await self._queued_run(orphan.owner_id, orphan.conversation_id, orphan.id, stored, publisher)
            )
        return adopted

    async def _adopted_phase_1(self, orphan: queue.Orphan, transactions: Transactions) -> TurnStarted:
        """An adopted message's phase 1: a queued turn's (below the latest answer, the row removed with it)."""
        settings, owner = self.settings, orphan.owner_id
        started = await begin_turn(
            transactions,
            settings,
            owner,
            agents=AgentChoice(self.resources.agents, None, orphan.allowed_agents),  # the conversation's agent
            message=orphan.content,
            conversation_id=orphan.conversation_id,
            system=None,
            options=TurnOptions(content=orphan.blocks, dequeue=orphan.id),
            overlap=False,
        )
        return await self._fitting(started, owner)

    async def _fitting(self, started: TurnStarted, owner: uuid.UUID) -> TurnStarted:
        """A started turn whose history does not fit at all, compacted now (before its model call);
        its attachments are read as the turn's first step (`Turn.prepare`)."""
        if started.overflow and self.resources.compactor is not None:
            return await self.resources.compactor.before_call(started, owner)
        return started

    async def _queued_run(
        self,
        owner: uuid.UUID,
        conversation_id: uuid.UUID,
        queued_id: uuid.UUID,
        phase_1: Callable[[Transactions], Awaitable[TurnStarted]],
        publisher: RunPublisher,
        *,
        gated_offered: bool = True,
        history_key: Callable[[Turn], str | None] | None = None,
    ) -> Queued:
        """The run (its id the queued id) of a queued message's turn: it waits until it holds the lock
        and is next (adopting orphans ahead of it), then stores the message and runs the turn."""
        resources = self.resources

        async def acquire() -> Lock | None:
            return await acquire_conversation(resources.locks, owner, conversation_id)

        async def adopt(queued_ids: list[uuid.UUID]) -> None:
            await self.adopt(queued_ids, publisher)

        class Recording:
            """The door's publisher, keeping the turn's failure for a JSON client."""

            def start(self, turn: Turn, run: Run) -> None:
                publisher.start(turn, run)

            def event(self, turn: Turn, event: TurnEvent, run: Run) -> None:
                if isinstance(event, TurnFailed):
                    holder.error = event.error
                publisher.event(turn, event, run)

            def interrupted(self, turn: Turn, run: Run) -> None:
                publisher.interrupted(turn, run)

        async def drive(run: Run) -> None:
            try:
                run.publish("queued", {"queued_id": str(queued_id), "conversation_id": str(conversation_id)})
                try:
                    lock = await queue.wait_turn(resources, owner, conversation_id, queued_id, acquire, BUSY, adopt)
                except (NoLongerQueued, queue.StaysQueued) as exc:
                    # Another run of it (adopted twice) answered it; or this replica drains: another adopts it.
                    holder.error = exc
                    run.publish("error", envelope(exc.type, exc.message))
                    return
                except anyio.get_cancelled_exc_class():
                    # Only a shutdown cancels a run waiting in line: its message is adopted elsewhere.
                    holder.error = queue.StaysQueued()
                    run.publish("error", envelope(holder.error.type, holder.error.message))
                    raise
                try:
                    async with resources.db.transactions() as transactions:
                        started = await phase_1(transactions)
                except BaseException as exc:
                    # Failed for now (the database unreachable, a 503, a shutdown): it stays queued, for
                    # a sweep to adopt. Refused for good (its client is told why), or failed by a bug
                    # (which a retry would only repeat, holding up the queue behind it): out of the queue.
                    cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
                    for_now = cancelled or isinstance(exc, ServiceUnavailable) or is_db_unavailable(exc)
                    with anyio.move_on_after(2, shield=True):
                        if lock is not None:
                            await degraded(resources.locks.release(lock), None, "conversation_lock")
                        if not for_now:
                            await queue.forget(resources, queued_id)
                    if cancelled or (not isinstance(exc, AppError) and not for_now):
                        raise
                    holder.error = queue.StaysQueued(queue.FAILED_FOR_NOW) if for_now else cast(AppError, exc)
                    run.publish("error", envelope(holder.error.type, holder.error.message))
                    return
                turn = self._turn(started, transactions, owner, gated_offered=gated_offered, lock=lock)
                turn.history_key = history_key
                holder.turn = turn
                await as_run(turn, Recording())(run)
            finally:
                holder.done.set()

        run = await resources.runs.start(queued_id, owner, drive)
        holder = Queued(run, queued_id)  # before `drive` runs: starting it does not wait for it
        return holder

    async def _interrupt(self, owner: uuid.UUID, conversation_id: uuid.UUID) -> Lock | None:
        """The running turn interrupted (wherever it runs), then its lock, once it has recorded its
        answer and let go; BUSY if that takes longer than multitask.WAIT_SECONDS."""
        resources, cancelled = self.resources, set[uuid.UUID]()
        with anyio.move_on_after(multitask.WAIT_SECONDS):
            while True:
                # Looked up again now and then: the running answer may not have been stored yet.
                await multitask.cancel_running(resources, owner, conversation_id, cancelled)
                for _ in range(int(multitask.RETRY_CANCEL_SECONDS / multitask.POLL_SECONDS)):
                    await anyio.sleep(multitask.POLL_SECONDS)
                    lock = await acquire_conversation(resources.locks, owner, conversation_id)
                    if lock is not BUSY:
                        return lock
        return BUSY

    async def _take_slot(self, owner: uuid.UUID) -> uuid.UUID | None:
        """One of the key's MAX_TURNS_IN_FLIGHT_PER_KEY slots, or TooManyTurns (None: off or Redis down)."""
        limits = self.resources.limits
        if not limits.turns_in_flight:
            return None  # off: no slot to take (nor an id for one)
        slot = uuid.uuid4()
        decision = await degraded(limits.acquire_turn(owner, slot), None, "turns_in_flight")
        if decision is None:
            return None
        if not decision.allowed:
            log.info("limits.refused", limit="turns_in_flight")
            self.resources.metrics.limit_refusals.labels("turns_in_flight").inc()
            raise TooManyTurns(headers=decision.headers())
        return slot

    async def start_run(self, turn: Turn, publisher: RunPublisher) -> Run:
        """Execute the turn as a run owned by the app (not by the request), its events published."""
        resumed = turn.resume
        return await self.resources.runs.start(
            # A continuation is a run of its own (its own events), the paused answer's id is the first's.
            continuation_run_id(turn.started.message_id, resumed.segment) if resumed else turn.started.message_id,
            turn.context.owner_id,
            as_run(turn, publisher),
            conversation_id=turn.started.conversation_id,
            lock=turn.lock[1] if turn.lock is not None else None,  # so another replica can free it
        )


async def get_turn_service(request: Request) -> TurnService:
    return TurnService(resources_of(request.app))


TurnServiceDep = Annotated[TurnService, Depends(get_turn_service)]
