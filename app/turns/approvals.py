"""A paused turn: tool calls that wait for a person's decision, and how the turn goes on.

A turn whose model asks for a gated tool (an agent's `approval`) runs the other calls, then is
recorded `awaiting_approval` with the pending calls left open in its content, and ends: nothing is
held while it waits (no connection, task, lock or turn slot). `claim_paused` is the continuation's
phase 1 on whichever replica receives the decisions: it reads the paused answer, checks the
decisions, and claims it (`awaiting_approval` → `in_progress`, so two replicas cannot both go on).
A paused answer not decided within APPROVAL_TIMEOUT_SECONDS, or whose conversation gets a new
message instead, has its pending calls denied and recorded (`deny_paused`).
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import Uuid, bindparam, select, text, update

from app.agent.history import split_assistant
from app.agent.loop import Decision
from app.agents.errors import AgentNotFound, AgentUnavailable
from app.conversations.branches import branch
from app.conversations.errors import ConversationNotFound
from app.core.config import Settings
from app.core.db import Database, Transactions, Tx
from app.core.periodic import periodically
from app.llm.base import Block, LLMRequest, Sampling, Usage
from app.llm.summary import SUMMARY_ROLE
from app.models import Conversation, Message
from app.models.base import utcnow
from app.models.conversations import MessageStatus
from app.turns.begin import AgentChoice, TurnStarted
from app.turns.compaction import fold
from app.turns.errors import NotPending, UndecidedCalls
from app.turns.store import pending_calls, record_denied, with_denials

log = structlog.get_logger(__name__)

TIMED_OUT = "no decision came in time"
PAUSED_TRACE = "traceparent"  # in a paused answer's attributes: the trace its continuation links to


@dataclass(frozen=True, slots=True)
class CallOptions:
    """What a continuing request brings for the model calls that follow the decisions: the caller's
    own tools, per-request instructions (`system_per_turn`: they replace the conversation's), a cap
    on the answer and sampling. None of it: the conversation's and the agent's, as /chat continues."""

    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: dict[str, Any] | None = None
    system: str | None = None
    system_per_turn: bool = False
    max_tokens: int | None = None
    sampling: Sampling = Sampling()


@dataclass(frozen=True, slots=True)
class Paused:
    started: TurnStarted
    content: list[Block]
    pending: list[Block]
    usage: Usage
    segment: int  # this continuation's number: 1 for the first, more when the answer paused again
    claimed_at: datetime
    # The pause as it was before the claim (its updated_at and attributes), to give it back.
    paused_at: datetime
    attributes: dict[str, Any] | None


def continuation_run_id(message_id: uuid.UUID, segment: int) -> uuid.UUID:
    """The run of an answer's `segment`-th continuation: its own id (its own event log), derived, so
    the answer's id and the continuation's number find it on any replica."""
    return uuid.uuid5(message_id, f"continuation-{segment}")


def resumption_record(
    content: list[Block], usage: Usage, decisions: list[Decision], at: datetime, response: dict[str, Any] | None
) -> dict[str, Any]:
    """What the answer's `attributes.resumptions` keeps of each continuation: where its blocks begin,
    the usage and time at that point, the decisions, and (Responses) the request's own attributes."""
    record: dict[str, Any] = {
        "at": len(content),
        "usage": [
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens,
        ],
        "created_at": at.timestamp(),
        "decisions": [
            {"tool_use_id": d.tool_use_id, "approve": d.approve, "reason": d.reason, "edited": d.input is not None}
            for d in decisions
        ],
    }
    if response is not None:
        record["response"] = response
    return record


async def deny_paused(tx: Tx, message_id: uuid.UUID, content: list[Block], reason: str, stop_reason: str) -> bool:
    """Record a paused answer's pending calls as denied; False if it was not paused any more."""
    done = await record_denied(tx, message_id, with_denials(content, reason), stop_reason)
    if done:
        log.info("approval.denied", message_id=str(message_id), reason=stop_reason)
    return done


def check_decisions(pending: list[Block], decisions: list[Decision]) -> None:
    """409 for a decision on a call that is not pending; 422 for one decided twice or one left undecided."""
    ids = [call["id"] for call in pending]
    for decision in decisions:
        if decision.tool_use_id not in ids:
            raise NotPending(f"The tool call {decision.tool_use_id[:100]!r} is not waiting for a decision.")
    seen = [d.tool_use_id for d in decisions]
    if len(seen) != len(set(seen)):
        raise UndecidedCalls("A tool call was decided twice.")
    undecided = [tid for tid in ids if tid not in seen]
    if undecided:
        raise UndecidedCalls(f"These pending tool calls need a decision too: {', '.join(undecided)}.")


async def claim_paused(
    transactions: Transactions,
    settings: Settings,
    owner_id: uuid.UUID,
    conversation_id: uuid.UUID,
    decisions: list[Decision],
    agents: AgentChoice,
    *,
    incremental: bool,
    message_id: uuid.UUID | None = None,
    response: dict[str, Any] | None = None,
    calls: CallOptions | None = None,
) -> Paused:
    """The continuation's phase 1: the paused answer, its decisions checked, claimed for this replica.

    `message_id`: the answer the caller means (a Responses `previous_response_id`), which must be the
    paused one; `response`: that door's attributes for the continuation, kept with it; `calls`: what
    its request brings for the model calls that follow (Responses: each request its own tools and
    instructions)."""
    owned = Conversation.id == conversation_id, Conversation.owner_id == owner_id
    async with transactions() as tx:
        conversation = (await tx.conn.execute(select(Conversation.system, Conversation.agent).where(*owned))).first()
        if conversation is None:
            raise ConversationNotFound()
        columns = (
            Message.id, Message.parent_id, Message.role, Message.content, Message.status, Message.created_at,
            Message.updated_at,
            Message.input_tokens, Message.output_tokens, Message.cache_read_tokens, Message.cache_creation_tokens,
            Message.attributes,
        )  # fmt: skip
        rows = (
            await tx.conn.execute(
                select(*columns).where(Message.conversation_id == conversation_id).order_by(Message.id)
            )
        ).all()
    bound = conversation.agent or agents.catalog.default.name
    if bound not in agents.catalog:
        raise AgentUnavailable(bound)
    if agents.allowed is not None and bound not in agents.allowed:
        raise AgentNotFound(bound)
    agent = agents.catalog.resolve(bound, None)
    # A compaction stored while this turn ran may sort after its answer: the answer is the last message.
    last = next((row for row in reversed(rows) if row.role != SUMMARY_ROLE), None)
    if last is None or last.role != "assistant" or last.status != MessageStatus.AWAITING_APPROVAL:
        raise NotPending("Nothing in this conversation is waiting for a decision.")
    if message_id is not None and last.id != message_id:
        raise NotPending("That answer is not the one waiting for a decision.")
    content: list[Block] = list(last.content or [])
    pending = pending_calls(content)
    if _updated(last.updated_at) + timedelta(seconds=settings.approval_timeout_seconds) < utcnow():
        async with transactions() as tx:
            await deny_paused(tx, last.id, content, TIMED_OUT, "approval_timeout")
        raise NotPending("The pending tool calls timed out and were denied.")
    check_decisions(pending, decisions)
    usage = Usage(last.input_tokens, last.output_tokens, last.cache_read_tokens, last.cache_creation_tokens)
    now = utcnow()
    attributes = dict(last.attributes or {})
    resumptions = [*attributes.get("resumptions", []), resumption_record(content, usage, decisions, now, response)]
    attributes["resumptions"] = resumptions
    async with transactions() as tx:
        # The compare-and-set on the status makes this the only continuation, and its attributes the last word.
        claim = (
            update(Message)
            # The pause as read (its updated_at too): a pause continued and paused again meanwhile
            # (possible with Redis down, no lock) is another pause, not this one.
            .where(
                Message.id == last.id,
                Message.status == MessageStatus.AWAITING_APPROVAL,
                Message.updated_at == last.updated_at,
            )
            .values(status=MessageStatus.IN_PROGRESS, updated_at=now, attributes=attributes)
        )
        if not (await tx.conn.execute(claim)).rowcount:
            raise NotPending("These tool calls were decided meanwhile.")
    earlier: list[dict[str, Any]] = []
    # Its branch, folded by the latest compaction on it, as phase 1 reads a history (app/turns/compaction.py).
    for role, blocks in fold([(row.id, row.role, row.content) for row in branch(rows, last.id) if row is not last]):
        if role == "user":
            earlier.append({"role": "user", "content": list(blocks or [])})
        else:
            earlier.extend(split_assistant(list(blocks or [])))
    calls = calls or CallOptions()
    request = LLMRequest(
        model=agent.model,
        messages=earlier,
        max_tokens=min(calls.max_tokens or agent.max_tokens, agent.max_tokens),
        system=agent.system_prompt(calls.system if calls.system_per_turn else conversation.system),
        tools=list(calls.tools),
        tool_choice=calls.tool_choice,
        incremental=incremental,
        sampling=calls.sampling,
    )
    started = TurnStarted(conversation_id, last.id, last.created_at, agent, request)
    return Paused(started, content, pending, usage, len(resumptions), now, last.updated_at, last.attributes)


# One statement, the other keys kept: JSONB's merge on Postgres, json_set on SQLite.
# (attributes may be SQL NULL or JSON null: both read as no keys.)
_KEEP_TRACE = {
    "postgresql": "attributes = (CASE WHEN jsonb_typeof(attributes) = 'object' THEN attributes ELSE '{}'::jsonb END)"
    " || jsonb_build_object(CAST(:key AS text), CAST(:value AS text))",
    "sqlite": "attributes = json_set(CASE WHEN json_type(attributes) = 'object' THEN attributes ELSE '{}' END,"
    " '$.' || :key, :value)",
}


async def keep_paused_trace(transactions: Transactions, message_id: uuid.UUID, traceparent: str) -> None:
    """A paused answer notes its execution's trace, for the continuation's to link to (tracing on,
    paused turns only: one statement). Its updated_at stays: a claim compares it."""
    async with transactions.statement() as conn:
        merge = _KEEP_TRACE[conn.dialect.name]
        statement = text(
            f"UPDATE messages SET {merge} WHERE id = :id AND status = '{MessageStatus.AWAITING_APPROVAL.value}'"
        ).bindparams(bindparam("id", type_=Uuid()))
        await conn.execute(statement, {"id": message_id, "key": PAUSED_TRACE, "value": traceparent})


async def unclaim(transactions: Transactions, paused: Paused) -> bool:
    """A claimed pause given back as it was (something failed before its turn could run: reading
    its attachments): its decisions may be sent again, here or on another replica. False if the
    claim had moved on meanwhile."""
    message_id = paused.started.message_id
    give_back = (
        update(Message)
        .where(
            Message.id == message_id,
            Message.status == MessageStatus.IN_PROGRESS,
            Message.updated_at == paused.claimed_at,
        )
        .values(status=MessageStatus.AWAITING_APPROVAL, updated_at=paused.paused_at, attributes=paused.attributes)
    )
    async with transactions() as tx:
        done = bool((await tx.conn.execute(give_back)).rowcount)
    log.info("approval.unclaimed", message_id=str(message_id), given_back=done)
    return done


def _updated(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=utcnow().tzinfo)


async def sweep_expired_approvals(db: Database, older_than: float, *, limit: int = 100) -> int:
    """Deny and record the pending calls of answers paused longer than APPROVAL_TIMEOUT_SECONDS."""
    before = utcnow() - timedelta(seconds=older_than)
    denied_count = 0
    async with db.transaction() as conn:
        stale = (
            await conn.execute(
                select(Message.id, Message.content)
                .where(Message.status == MessageStatus.AWAITING_APPROVAL, Message.updated_at < before)
                .order_by(Message.updated_at)
                .limit(limit)
            )
        ).all()
        for row in stale:
            denied_count += await deny_paused(
                Tx(conn, None), row.id, list(row.content or []), TIMED_OUT, "approval_timeout"
            )
    return denied_count


def expiring_approvals(db: Database, after_seconds: float) -> AbstractAsyncContextManager[None]:
    """While the app runs: now and then, deny what waited past its timeout."""
    every = min(60.0, max(after_seconds / 4, 0.05))
    return periodically(lambda: sweep_expired_approvals(db, after_seconds), every, failed="approval.sweep_failed")
