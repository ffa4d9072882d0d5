"""Phase 1 of a turn: one statement stores the user's message (never lost after this) and an
`in_progress` assistant placeholder, and reads the history the model will see.

A new conversation's first JSON turn reads no history, so its statement need not finish before the
model is asked: it is sent, and the turn goes on while Postgres runs it (see `TurnStarted.stored`).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog

from app.agent.history import build_history
from app.agents.catalog import AgentCatalog, ServedAgent
from app.agents.errors import AgentMismatch, AgentNotFound, AgentUnavailable
from app.conversations.errors import ConversationNotFound, MessageNotFound
from app.core.config import Settings
from app.core.db import Transactions
from app.core.errors import AppError
from app.llm.base import Block, LLMRequest, Sampling
from app.turns.compaction import Folded, history_budget, provider_context, trimmed
from app.turns.errors import NoLongerQueued
from app.turns.store import (
    AgentFilter,
    Continues,
    NewConversation,
    NotOpened,
    OpenedTurn,
    Opening,
    new_conversation,
    record_denied,
    turn_store,
)

log = structlog.get_logger(__name__)


TITLE_CHARS = 80
_STORING: set[asyncio.Task[None]] = set()


def make_title(message: str) -> str:
    line = " ".join(message.split())
    if len(line) <= TITLE_CHARS:
        return line
    cut = line[:TITLE_CHARS].rsplit(" ", 1)[0] or line[:TITLE_CHARS]
    return cut + "…"


@dataclass(frozen=True, slots=True)
class AgentChoice:
    """Which agent a turn may run as: the one it names (None: the conversation's, or the default
    for a new one), among those its key may use (`allowed`; None: all)."""

    catalog: AgentCatalog
    named: ServedAgent | None
    allowed: tuple[str, ...] | None

    def new_conversation(self) -> ServedAgent:
        return self.catalog.resolve(None, self.allowed)

    def filter(self) -> AgentFilter:
        names = [self.named.name] if self.named is not None else [a.name for a in self.catalog.usable(self.allowed)]
        return AgentFilter(names, self.catalog.default.name)


@dataclass(frozen=True, slots=True)
class TurnStarted:
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    created_at: datetime
    agent: ServedAgent
    request: LLMRequest
    # Phase 1's statement still on its way (a new conversation's JSON turn); the Turn owns it and
    # lets nothing out (an event, a tool's write, the outcome) before it has committed.
    stored: asyncio.Task[None] | None = None
    # Long conversations (app/turns/compaction.py): the history was just compacted (the `context`
    # event's fields); it did not fit even so (`overflow`: compacted before the model call).
    compacted: dict[str, Any] | None = None
    overflow: bool = False

    @property
    def model(self) -> str:
        return self.agent.model


@dataclass(frozen=True, slots=True)
class TurnOptions:
    """What a door may ask of a turn beyond a text message (the OpenAI-compatible door uses all of it)."""

    # The user's turn as blocks (a client's tool results first, then text); None: the message as text.
    content: list[Block] | None = None
    # Whether the door can carry an approval; False: tools that need one are not offered (a forged
    # call of one is refused, never run).
    approvals: bool = True
    # The caller's own history before this turn (it owns the context), as conversation rows (role,
    # blocks); None: the conversation's. A turn that opens a conversation stores it ahead of its message.
    history: list[tuple[str, list[Block]]] | None = None
    # Continue below this answer of the conversation: a branch from it, whose history ends with it
    # (an edit; OpenAI's previous_response_id); ROOT: a new first message. None: below the latest.
    after: uuid.UUID | None = None
    # Answer this answer's user message again, beside it (regenerate): no new user message.
    regenerate: uuid.UUID | None = None
    # Continue the conversation whose answer has this history key, if this owner has one (else a new one).
    extends_key: str | None = None
    # True: the request's `system` applies to this turn only, instead of the conversation's.
    system_per_turn: bool = False
    # The caller's own tools (Anthropic shape), offered beside ours; a call of one ends the turn.
    tools: tuple[dict[str, Any], ...] = ()
    tool_choice: dict[str, Any] | None = None
    max_tokens: int | None = None  # at most LLM_MAX_TOKENS
    # Stored with the answer, for the door to show again (request fields such as OpenAI's metadata).
    attributes: dict[str, Any] | None = None
    # A client's own id for its conversation (Open WebUI's chat id): the turn continues the owner's
    # conversation with this id, or opens one under it. The client's end user, recorded on a new one.
    external_id: str | None = None
    end_user: str | None = None
    sampling: Sampling = Sampling()  # the client's temperature, top_p, stop…
    # A queued message (app/turns/queue.py) this turn stores: its queue row removed in the same statement.
    dequeue: uuid.UUID | None = None


async def begin_turn(
    transactions: Transactions,
    settings: Settings,
    owner_id: uuid.UUID,
    *,
    agents: AgentChoice,
    message: str,
    conversation_id: uuid.UUID | None,
    system: str | None,
    incremental: bool = True,
    options: TurnOptions = TurnOptions(),  # noqa: B008 - frozen, never mutated
    overlap: bool = False,
) -> TurnStarted:
    """Phase 1. `overlap`: the caller allows a new conversation's INSERT to run beside the model call."""
    content = options.content if options.content is not None else [{"type": "text", "text": message}]
    # A continued conversation's agent is known once phase 1 has read it: its model is recorded then.
    named = agents.named if conversation_id is not None else agents.named or agents.new_conversation()
    # A client's own history is stored when it opens the conversation (one it continues already holds it).
    earlier = (options.history or ()) if conversation_id is None else ()
    opening = Opening(owner_id, content, named.model if named is not None else None, options.attributes, earlier)
    stored: asyncio.Task[None] | None = None
    opened: OpenedTurn
    if conversation_id is None:
        assert named is not None
        new = new_conversation(
            opening,
            title=make_title(message),
            system=system,
            agent=named.name,
            external_id=options.external_id,
            end_user=options.end_user,
        )
        opened = new.opened
        # Overlapped with the model call only where nothing reaches the client before the outcome
        # is recorded (a stream's `start` says the message is stored), and only with a connection
        # free now: under pressure, a turn that could not store its message must not call the model.
        db = transactions.db
        # Nor under a client's id, whose unique index may refuse the row (another turn opened it first).
        if overlap and not incremental and options.external_id is None and db.is_postgres and db.has_free_connection():
            stored = asyncio.create_task(_store_new(transactions, new), name="turn.store_new")
            _STORING.add(stored)  # owned by the Turn; held here too, as the loop keeps only a weak reference
            stored.add_done_callback(_STORING.discard)
        else:
            await _store_new(transactions, new)
    else:
        # One statement on Postgres (see turn_store): the connection is held for one round trip.
        async with transactions() as tx:
            found = await turn_store(tx).open_existing(
                opening,
                conversation_id=conversation_id,
                agents=agents.filter(),
                continues=Continues(options.after, options.regenerate),
                read_history=options.history is None,
                dequeue=options.dequeue,
            )
        if isinstance(found, NotOpened):
            raise _why_not_opened(agents, found)
        opened = found
        if opened.content is not None:  # a regenerated answer: its user message, as stored
            content = opened.content
        for message_id, denied_content in opened.superseded:
            # This message supersedes a pause: its pending calls are recorded denied, as the model sees them.
            async with transactions() as tx:
                await record_denied(tx, message_id, denied_content, "approval_superseded")
    agent = agents.catalog.resolve(opened.agent, None)
    system_prompt = agent.system_prompt(system if options.system_per_turn else opened.system)
    # Past what fits the agent's window (compaction on) or HISTORY_TOKEN_BUDGET, the oldest turns go.
    budget = history_budget(agent, settings, system_prompt, options.tools)
    rows = options.history if options.history is not None else opened.earlier
    history = build_history(rows, content, budget=budget)
    compacted = rows.compacted if isinstance(rows, Folded) else None
    overflow = options.history is None and agent.config.compaction == "auto" and trimmed(rows, history)
    request = LLMRequest(
        model=agent.model,
        messages=history,
        max_tokens=min(options.max_tokens or agent.max_tokens, agent.max_tokens),
        system=system_prompt,
        tools=list(options.tools),
        tool_choice=options.tool_choice,
        incremental=incremental,
        sampling=options.sampling,
        context=provider_context(agent, settings),  # `compaction: provider`: the provider manages the context
    )
    log.debug(
        "chat.turn.started",
        conversation_id=str(opened.conversation_id),
        message_id=str(opened.assistant_id),
        history_messages=len(history),
    )
    return TurnStarted(
        opened.conversation_id, opened.assistant_id, opened.created_at, agent, request, stored, compacted, overflow
    )


def _why_not_opened(agents: AgentChoice, refused: NotOpened) -> AppError:
    """Phase 1 stored nothing: the conversation is not this owner's, or its agent is not this turn's."""
    bound = refused.bound
    if refused.unqueued:
        return NoLongerQueued()
    if refused.message:
        return MessageNotFound()
    if bound is None:
        return ConversationNotFound()
    if bound not in agents.catalog:
        return AgentUnavailable(bound)
    if agents.allowed is not None and bound not in agents.allowed:
        return AgentNotFound(bound)
    if agents.named is not None and agents.named.name != bound:
        return AgentMismatch(bound)
    return ConversationNotFound()  # its agent was this turn's a moment before: deleted meanwhile


async def _store_new(transactions: Transactions, new: NewConversation) -> None:
    async with transactions() as tx:
        await turn_store(tx).open_new(new)
