"""Where a turn is run. Three phases, each transaction its own `async with transactions() as tx`,
and no database connection is held across the model call:

1. `begin_turn` (begin.py): one statement stores the user's message (never lost after this) and an
   `in_progress` assistant placeholder, and reads the history. A new conversation's JSON turn
   sends it and goes on: the model call overlaps it, and nothing of the turn (an event, a tool,
   the outcome) goes out before it committed; if it fails, the turn fails as phase 1 would have.
2. `Turn.execute`: the agent (model calls and tools), with no connection checked out.
3. `Turn.record`: one statement stores the outcome — `complete`, `incomplete` (client left,
   shutdown: partial text kept) or `error` — whatever way phase 2 ended.

`transactions` is the request's opener (a `Depends` of the door), or the run's own once the turn
runs as a run (run.py), which may outlive the request.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import anyio
import structlog

from app.agent.history import continue_history, split_assistant
from app.agent.loop import Agent, Decision, ToolResultEvent, Transcript
from app.agent.tools.base import ToolContext
from app.core import telemetry
from app.core.config import Settings
from app.core.context import current_request_id
from app.core.db import Transactions
from app.core.errors import AppError, DatabaseUnavailable, ShuttingDown, db_unavailable, is_db_unavailable
from app.core.lifecycle import Lifecycle
from app.core.locks import Held, Lock, LockManager, kept
from app.core.metrics import Metrics
from app.core.prices import Tokens
from app.llm.base import Block, TextDelta, ToolCall, Usage
from app.llm.errors import UpstreamTimeout
from app.models.conversations import MessageStatus
from app.turns.begin import TurnStarted
from app.turns.store import Outcome, Spent, turn_store

log = structlog.get_logger(__name__)

RECORD_DEADLINE = 60.0


# Events a turn emits, in order: text deltas and tool events, then exactly one of TurnEnded / TurnFailed.
@dataclass(frozen=True, slots=True)
class TurnEnded:
    stop_reason: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class TurnFailed:
    error: AppError


@dataclass(frozen=True, slots=True)
class ApprovalRequired:
    """A call of a gated tool waits for a person's decision; the turn then ends `awaiting_approval`."""

    tool_use_id: str
    name: str
    input: dict[str, Any]


TurnEvent = TextDelta | ToolCall | ToolResultEvent | ApprovalRequired | TurnEnded | TurnFailed


@dataclass(frozen=True, slots=True)
class Resumption:
    """A paused turn continued: its pending calls and the decisions on them."""

    pending: list[Block]
    decisions: list[Decision]
    at: int = 0  # where the continuation's blocks begin in the answer's content
    segment: int = 0  # which continuation of the answer this is (1, 2…: it may pause again)
    created_at: datetime | None = None  # when the decisions came
    before: Usage = field(default_factory=Usage)  # the answer's usage when it paused
    traceparent: str | None = None  # the paused execution's invoke_agent span, linked from this one's


Emit = Callable[[TurnEvent], Awaitable[None]]


def not_saved() -> DatabaseUnavailable:
    return DatabaseUnavailable("The answer was produced but could not be saved; please retry.")


@dataclass(eq=False)  # identity-hashed: the lifecycle tracks turns in a set
class Turn:
    """Phases 2 and 3 of a started turn. The transcript holds what was produced, so any exit can record it."""

    started: TurnStarted
    agent: Agent
    context: ToolContext
    transactions: Transactions
    settings: Settings
    lifecycle: Lifecycle
    metrics: Metrics
    status: MessageStatus = MessageStatus.INCOMPLETE  # until the turn ends one way or another
    transcript: Transcript = field(default_factory=Transcript)
    error: AppError | None = None
    recorded: bool = False
    saved: bool = False
    after_record: list[Callable[[Turn], Awaitable[None]]] = field(default_factory=list)
    lock: tuple[LockManager, Lock] | None = None
    # The door's key of the exchange up to this answer, stored with it (see TurnRequest.history_key).
    history_key: Callable[[Turn], str | None] | None = None
    # Why an interrupted turn stopped ("cancelled", "client_disconnected"), recorded as its stop reason.
    interrupted_by: str | None = None
    resume: Resumption | None = None  # a paused turn, continued: its calls are decided first
    # The turn's first step in phase 2, its failures the turn's: its attachments' content read.
    prepare: Callable[[TurnStarted], Awaitable[TurnStarted]] | None = None
    traceparent: str | None = None  # this execution's invoke_agent span (tracing on), kept if it pauses
    _held: Held | None = None
    _scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    _shutdown: bool = False
    _reported: bool = False
    _usage_before: Usage = field(default_factory=Usage)  # the answer's usage before this execution (a paused turn's)

    @asynccontextmanager
    async def holding_lock(self) -> AsyncIterator[None]:
        """Keep the conversation's lock (renewed) from here until the block ends."""
        if self.lock is None:
            yield
            return
        async with kept(*self.lock) as held:
            self._held = held
            yield

    def __post_init__(self) -> None:
        if self.started.stored is not None:
            self.started.stored.add_done_callback(self._on_stored)

    def _on_stored(self, _: asyncio.Task[None]) -> None:
        if self._store_failure() is not None:
            self._scope.cancel()  # the message was not stored: the model's answer is moot

    async def _wait_stored(self) -> None:
        """Phase 1's statement, where it was overlapped: wait until it committed, or raise the turn's
        error for its failure (a 503 for the database, as when phase 1 runs first)."""
        task = self.started.stored
        if task is None:
            return
        try:
            await asyncio.shield(task)  # a cancelled turn must not cancel the insert under it
        except Exception as exc:
            raise self._store_error(exc) from exc

    @staticmethod
    def _store_error(exc: BaseException) -> AppError:
        if isinstance(exc, asyncio.CancelledError):  # only the loop's own teardown cancels it
            return ShuttingDown()
        return db_unavailable(exc) if is_db_unavailable(exc) else AppError()

    def _store_failure(self) -> BaseException | None:
        """Why the overlapped phase-1 statement did not commit; None if it did, is still running, or there is none."""
        task = self.started.stored
        if task is None or not task.done():
            return None
        return asyncio.CancelledError() if task.cancelled() else task.exception()

    def _after_stored(self, emit: Emit) -> Emit:
        async def gated(event: TurnEvent) -> None:
            if not isinstance(event, TurnFailed):
                await self._wait_stored()
            await emit(event)

        return gated

    def mark_client_left(self) -> None:
        """The client hung up mid-turn: recorded as the answer's stop reason, as for a run."""
        self.interrupted_by = "client_disconnected"

    def interrupt_for_shutdown(self) -> None:
        self._shutdown = True
        self._scope.cancel()

    def interrupt(self, key: object, reason: str) -> bool:
        """Stop this turn if `key` is its answer's id (a newer message's multitask "interrupt"): the
        partial answer is recorded `incomplete` with `reason` as its stop reason."""
        if key != self.started.message_id or self._scope.cancel_called:
            return False
        self.interrupted_by = reason
        self._scope.cancel()
        return True

    @property
    def text(self) -> str:
        return self.transcript.text()

    @property
    def usage(self) -> Usage:
        return self.transcript.usage

    @property
    def stop_reason(self) -> str | None:
        if self.status == MessageStatus.INCOMPLETE and self.interrupted_by is not None:
            return self.interrupted_by
        return self.transcript.stop_reason

    @property
    def pending_approvals(self) -> list[Block]:
        """The calls that paused this turn (tool_use blocks), while it awaits approval."""
        return self.transcript.pending if self.status == MessageStatus.AWAITING_APPROVAL else []

    @property
    def awaiting(self) -> list[str]:
        """Ids of the calls of the caller's own tools that ended this turn (the caller runs them)."""
        return self.transcript.awaiting

    async def execute(self, emit: Emit) -> None:
        """Phase 2: the agent, emitting events. Failures become a `TurnFailed` event, never an exception."""
        self.metrics.turns_in_flight.inc()
        self._usage_before = dataclasses.replace(self.usage)
        agent = self.started.agent
        try:
            with telemetry.invoke_agent(
                agent=agent.name,
                provider=agent.provider,
                model=self.started.model,
                conversation_id=self.started.conversation_id,
                owner_id=self.context.owner_id,
                request_id=current_request_id(),
            ) as span:
                if span is not None:
                    self.traceparent = telemetry.current_traceparent()
                    if self.resume is not None:  # the decisions' trace, linked to the one that paused
                        telemetry.link_current_span(self.resume.traceparent, "paused_turn")
                # The agent emits each text delta and tool call before anything follows from it (a
                # tool runs after its call is emitted): gating the events gates the turn's effects.
                await self._execute(emit if self.started.stored is None else self._after_stored(emit))
                error = self.error.type if self.error is not None else None
                telemetry.turn_finished(
                    span, status=self.status.value, stop_reason=self.stop_reason, usage=self._spent_usage(), error=error
                )
        finally:
            self.metrics.turns_in_flight.dec()

    def _spent_usage(self) -> Usage:
        """The tokens of this execution's model calls (a continued turn's usage also holds the paused part's)."""
        now, before = self.usage, self._usage_before
        return Usage(
            now.input_tokens - before.input_tokens,
            now.output_tokens - before.output_tokens,
            now.cache_read_input_tokens - before.cache_read_input_tokens,
            now.cache_creation_input_tokens - before.cache_creation_input_tokens,
        )

    def _spent(self) -> Spent | None:
        """This execution's usage row (None: it called no model)."""
        if not self.transcript.steps:
            return None
        u = self._spent_usage()
        return Spent(
            owner_id=self.context.owner_id,
            agent=self.started.agent.name,
            model=self.started.model,
            model_calls=self.transcript.steps,
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_input_tokens,
            cache_creation_tokens=u.cache_creation_input_tokens,
        )

    async def _execute(self, emit: Emit) -> None:
        try:
            with self.lifecycle.track(self), self._scope, anyio.fail_after(self.settings.turn_timeout):
                if self.started.stored is not None and not self.started.stored.done():
                    # Let the overlapped INSERT go out first: Postgres then commits it (a WAL flush)
                    # while we build the model request, and it is done before the model answers.
                    await asyncio.sleep(0)
                if self.prepare is not None:
                    self.started = await self.prepare(self.started)
                request = self.started.request
                if self.resume is not None:
                    await self.agent.decide(
                        self.resume.pending, self.resume.decisions, self.context, self.transcript, emit
                    )
                    # The history before the paused answer, then the answer so far with its calls' results.
                    so_far = [*request.messages, *split_assistant(self.transcript.blocks)]
                    messages = continue_history(so_far, [], budget=self.settings.history_token_budget)
                    request = dataclasses.replace(request, messages=messages)
                await self.agent.run(request, self.context, self.transcript, emit)
            await self._wait_stored()  # before the turn counts as done (also: its failure ended the scope)
            if self._scope.cancelled_caught and not self._shutdown and self.interrupted_by is not None:
                # Interrupted by a newer message (`interrupt`): the partial answer is kept, incomplete.
                await emit(TurnEnded(self.interrupted_by, self.usage))
                return
            if self._shutdown:
                # Interrupted by the drain: the partial answer is kept, the client is told why.
                self.error = ShuttingDown("The server shut down before the answer was complete.")
                log.warning("chat.turn.interrupted", conversation_id=str(self.started.conversation_id))
                await emit(TurnFailed(self.error))
                return
        except TimeoutError:
            self._fail(UpstreamTimeout("The turn did not finish within its deadline."))
        except AppError as exc:
            self._fail(exc)
        except Exception:
            log.exception("chat.turn.crashed", conversation_id=str(self.started.conversation_id))
            self._fail(AppError())
        else:
            if self.transcript.pending:
                self.status = MessageStatus.AWAITING_APPROVAL
                for call in self.transcript.pending:
                    await emit(ApprovalRequired(call["id"], call["name"], call.get("input") or {}))
            else:
                self.status = MessageStatus.COMPLETE
            await emit(TurnEnded(self.stop_reason or "end_turn", self.usage))
            return
        assert self.error is not None
        await emit(TurnFailed(self.error))

    def _fail(self, error: AppError) -> None:
        self.status, self.error = MessageStatus.ERROR, error
        cause = type(error.__cause__).__name__ if error.__cause__ else None
        log.warning(
            "chat.turn.failed",
            conversation_id=str(self.started.conversation_id),
            error_type=error.type,
            cause=cause,
        )
        # Only type, message and headers are kept: let go of the frames (and the SDK's suspended
        # stream generators) that the traceback chain would keep alive.
        error.__cause__ = error.__context__ = error.__traceback__ = None

    async def record(self, *, while_storing: Callable[[], None] | None = None) -> bool:
        """Phase 3, once; True when the outcome is stored.

        Shielded, so it finishes even when the turn was cancelled, and patient: a lost connection
        or an exhausted pool is retried on a fresh connection for up to RECORD_DEADLINE seconds,
        because a finished answer is worth more than a quick reply. `while_storing` runs once the
        statement is on its way to the database, while this waits for it (a door renders its answer).
        """
        if self.recorded:
            return self.saved
        self.recorded = True
        try:
            return await self._record(while_storing)
        finally:
            # The turn is over: free the conversation now, before the client hears so and
            # sends its next turn (not when the response finally closes).
            if self._held is not None:
                await self._held.release()

    async def _after_record(self) -> None:
        if not self.after_record:
            return
        with anyio.move_on_after(5, shield=True):
            for hook in self.after_record:
                try:
                    await hook(self)
                except Exception as exc:  # quotas and idempotency degrade; the outcome stands
                    log.warning(
                        "chat.turn.after_record_failed", hook=getattr(hook, "__name__", "?"), error=type(exc).__name__
                    )

    def _history_key(self) -> str | None:
        if self.history_key is None:
            return None
        try:
            return self.history_key(self)
        except Exception:  # a door's bug must not cost the answer: it is stored without a key
            log.exception("chat.turn.history_key_failed", message_id=str(self.started.message_id))
            return None

    def report(self) -> None:
        """Count the turn and log its outcome, once: after the door has answered, since neither is
        something the client waits for."""
        if self._reported:
            return
        self._reported = True
        metrics = self.metrics
        metrics.labelled(metrics.turns, self.status).inc()
        metrics.labelled(metrics.tokens, "in").inc(self.usage.input_tokens)
        metrics.labelled(metrics.tokens, "out").inc(self.usage.output_tokens)
        if self.transcript.steps:
            u, model = self._spent_usage(), self.started.model
            tokens = Tokens(u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens)
            if (cost := self.settings.model_prices.cost(model, tokens)) is not None:
                metrics.labelled(metrics.gen_ai_cost, self.started.agent.name, model).inc(cost)
        if self.saved:
            log.info(
                "chat.turn.finished",
                conversation_id=str(self.started.conversation_id),
                message_id=str(self.started.message_id),
                status=self.status,
                stop_reason=self.stop_reason,
                input_tokens=self.usage.input_tokens,
                output_tokens=self.usage.output_tokens,
            )

    async def _record(self, while_storing: Callable[[], None] | None) -> bool:
        if self.started.stored is not None:
            if not self.started.stored.done():
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([self.started.stored])  # the row to update must exist
            if (exc := self._store_failure()) is not None:
                # Nothing was stored, so there is nothing to record: that is the turn's outcome,
                # whatever else went wrong meanwhile (the model may have failed too). Claims go back.
                if not is_db_unavailable(exc) and not isinstance(exc, asyncio.CancelledError):  # a bug
                    log.error("chat.turn.store_failed", error=type(exc).__name__, exc_info=exc)
                self.status, self.error = MessageStatus.ERROR, self._store_error(exc)
                await self._after_record()
                return False
        error = None
        if self.error is not None:
            error = {"type": self.error.type, "message": self.error.message, "request_id": current_request_id()}
        outcome = Outcome(
            status=self.status.value,
            model=self.started.model,
            content=self.transcript.content(),
            stop_reason=self.stop_reason,
            error=error,
            input_tokens=self.usage.input_tokens,
            output_tokens=self.usage.output_tokens,
            cache_read_tokens=self.usage.cache_read_input_tokens,
            cache_creation_tokens=self.usage.cache_creation_input_tokens,
            history_key=self._history_key(),
        )
        spent = self._spent()  # the usage row, written by the same statement
        with anyio.move_on_after(RECORD_DEADLINE, shield=True):
            attempt, bug = 0, False
            while not self.saved:
                attempt += 1
                try:
                    async with self.transactions() as tx:
                        if while_storing is not None and attempt == 1:
                            # A callback, not a task: it runs when this waits on the statement below.
                            asyncio.get_running_loop().call_soon(while_storing)
                        await turn_store(tx).record(
                            self.started.message_id,
                            conversation_id=self.started.conversation_id,
                            outcome=outcome,
                            spent=spent,
                        )
                    self.saved = True
                except Exception as exc:
                    if not is_db_unavailable(exc):
                        # A bug, not an outage: retrying would not help. The user's message is safe;
                        # the answer stays `in_progress` and is skipped on replay.
                        log.exception("chat.turn.record_failed", message_id=str(self.started.message_id))
                        bug = True
                        break
                    log.warning("chat.turn.record_retry", attempt=attempt, error=type(exc).__name__)
                    await anyio.sleep(min(0.2 * attempt, 2.0))
        if not self.saved and not bug:
            log.error("chat.turn.record_timed_out", message_id=str(self.started.message_id))
        # The claims go back however phase 3 ended (a slot, an Idempotency-Key that then replays
        # only a stored answer): an outcome that could not be stored must not hold them for long.
        await self._after_record()
        return self.saved
