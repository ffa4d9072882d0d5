"""The SQL of a turn's phases: one statement per phase on Postgres (asyncpg), a short transaction
on SQLite; and the owner-scoped lookups of the conversation a turn continues.

`turn_store(tx)` gives the phases' store inside a transaction a phase opened (`async with
transactions() as tx`, see app/core/db.py). On Postgres the statements are written out for asyncpg:
phase 1 is one data-modifying CTE, phase 3 one UPDATE, each its own transaction, each holding its
connection for one round trip. Their parameters are typed records (`NewMessages`, `Outcome`) whose
field names are the columns they write; tests/turns pins those names to the models.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Uuid, bindparam, delete, func, insert, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.agent.loop import denied
from app.conversations.errors import ConversationBusy
from app.core.db import Driver, Tx
from app.core.ids import uuid7
from app.core.text import clean, clean_text
from app.llm.base import Block
from app.models import Conversation, Message, QueuedMessage
from app.models.base import utcnow
from app.models.conversations import MessageStatus
from app.models.usage import ModelUsage
from app.turns.compaction import fold


@dataclass(frozen=True, slots=True)
class OpenedTurn:
    """What phase 1 stored and read: the conversation, the assistant placeholder, the history before it."""

    conversation_id: uuid.UUID
    assistant_id: uuid.UUID
    created_at: datetime
    system: str | None
    earlier: list[tuple[str, Any]]
    agent: str  # the agent the conversation is bound to
    # Answers of the history that were paused for approval, their pending calls now denied (this new
    # message supersedes them): (id, content with the denials), to be recorded so.
    superseded: list[tuple[uuid.UUID, list[Block]]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Opening:
    """What phase 1 stores in either case: the owner's user message, and the answer's placeholder."""

    owner_id: uuid.UUID
    content: list[Block]
    model: str | None  # None: not known before the statement (recorded with the outcome)
    attributes: dict[str, Any] | None = None
    # A client's own history (role, blocks) stored ahead of the user's message; by `open_new` only.
    earlier: Sequence[tuple[str, list[Block]]] = ()


@dataclass(frozen=True, slots=True)
class NewMessages:
    """Phase 1's parameters: the user's message and the answer's placeholder, every id and the time
    taken before the statement is sent. jsonb goes to asyncpg as text."""

    user_id: uuid.UUID
    assistant_id: uuid.UUID
    content: str  # the user's blocks, as JSON
    model: str | None
    attributes: str | None  # as JSON
    now: datetime
    earlier: str | None = None  # the client's history as rows, [{"id", "role", "content"}], as JSON

    @classmethod
    def of(cls, opening: Opening) -> NewMessages:
        # UUIDv7, taken in this order: the user's message sorts before the assistant's. Requests are
        # validated (422); cleaning here keeps any other caller from a 500 in Postgres.
        attributes = opening.attributes
        earlier = [{"id": str(uuid7()), "role": role, "content": blocks} for role, blocks in opening.earlier]
        return cls(
            user_id=uuid7(),
            assistant_id=uuid7(),
            content=json.dumps(clean(opening.content), ensure_ascii=False),
            model=opening.model,
            attributes=json.dumps(clean(attributes), ensure_ascii=False) if attributes is not None else None,
            now=utcnow(),
            earlier=json.dumps(clean(earlier), ensure_ascii=False) if earlier else None,
        )


@dataclass(frozen=True, slots=True)
class NewConversation:
    """Phase 1 of a new conversation, settled before it is stored: every id and timestamp is taken
    here, so the turn can go on (see `begin_turn`) while the statement is on its way."""

    opening: Opening
    title: str
    system: str | None
    agent: str
    messages: NewMessages
    opened: OpenedTurn
    external_id: str | None = None  # a client's id for it (unique per owner): ConversationBusy if taken
    end_user: str | None = None


def new_conversation(
    opening: Opening,
    *,
    title: str,
    system: str | None,
    agent: str,
    external_id: str | None = None,
    end_user: str | None = None,
) -> NewConversation:
    title, system = clean_text(title), clean_text(system) if system is not None else None
    messages, conversation_id = NewMessages.of(opening), uuid7()
    opened = OpenedTurn(conversation_id, messages.assistant_id, messages.now, system, [], agent)
    client = clean_text(external_id) if external_id else None, clean_text(end_user) if end_user else None
    return NewConversation(opening, title, system, agent, messages, opened, *client)


@dataclass(frozen=True, slots=True)
class NotOpened:
    """Phase 1 stored nothing: no such conversation of this owner (`bound` None), or one bound to
    the agent `bound`, outside the turn's `AgentFilter`."""

    bound: str | None


@dataclass(frozen=True, slots=True)
class AgentFilter:
    """Which conversations a turn may continue, by their agent: bound to one of `names` (a
    conversation from before agents, bound to none, counts as the `default` agent's)."""

    names: list[str]
    default: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """Phase 3's parameters: what an answer's row records. Each field is the `messages` column it sets."""

    status: str
    model: str
    content: list[Block]
    stop_reason: str | None
    error: dict[str, Any] | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    history_key: str | None

    def cleaned(self) -> Outcome:
        # Model output and tool results may hold NUL or lone surrogates, which Postgres refuses: an
        # answer that cannot be stored would stay `in_progress` for good.
        return Outcome(*(clean(getattr(self, name)) for name in OUTCOME_COLUMNS))


@dataclass(frozen=True, slots=True)
class Spent:
    """Phase 3's usage row, recorded by the same statement as the outcome: the model calls this
    execution of the turn made, per key, agent and model. Each field is the `model_usage` column it sets."""

    owner_id: uuid.UUID
    agent: str
    model: str
    model_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int


class TurnStore(Protocol):
    async def open_new(self, new: NewConversation) -> None: ...

    async def open_existing(
        self,
        opening: Opening,
        *,
        conversation_id: uuid.UUID,
        agents: AgentFilter,
        until: uuid.UUID | None = None,
        read_history: bool = True,
        dequeue: uuid.UUID | None = None,
    ) -> OpenedTurn | NotOpened:
        """NotOpened when the conversation does not exist, is not this owner's or is bound to an agent
        outside `agents`: nothing is stored then, and it says which.

        The history read is the conversation's, or only up to `until`, or none (`read_history=False`).
        `dequeue`: the queued message this turn stores, removed from the queue with it (or not at all).
        """

    async def record(
        self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, outcome: Outcome, spent: Spent | None = None
    ) -> None:
        """Phase 3: record an assistant message's outcome; scoped to its conversation (owned by the caller).
        With `spent`, the turn's usage row too, in the same statement (only if the answer was recorded)."""


def turn_store(tx: Tx) -> TurnStore:
    """The phases' SQL inside a transaction a phase opened."""
    return PostgresTurns(tx.driver) if tx.driver is not None else SqliteTurns(tx.conn)


# The columns the written-out statements name (tests/turns pins them to the models).
MESSAGE_COLUMNS = (
    "id", "conversation_id", "role", "content", "status", "model", "attributes", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_creation_tokens", "created_at", "updated_at",
)  # fmt: skip
CONVERSATION_COLUMNS = (
    "id", "owner_id", "title", "system", "agent", "created_at", "updated_at", "external_id", "end_user",
)  # fmt: skip
_JSONB = {"content", "error"}

# Phase 1's messages: VALUES joined to the conversation row, so nothing is inserted unless that row
# exists (and, continuing, is owned). $1 conversation, $2 owner, $3 now, $4-$8 the messages.
_MESSAGES_FROM_VALUES = f"""
    INSERT INTO messages ({", ".join(MESSAGE_COLUMNS)})
    SELECT m.id, conversation.id, m.role, m.content, m.status, m.model, m.attributes, 0, 0, 0, 0, $3, $3
    FROM conversation CROSS JOIN (VALUES
        ($4::uuid, 'user', $5::jsonb, 'complete', NULL::varchar, NULL::jsonb),
        ($6::uuid, 'assistant', '[]'::jsonb, 'in_progress', $7::varchar, $8::jsonb)
    ) AS m(id, role, content, status, model, attributes)
"""
_OPEN_NEW = (
    f"""
    WITH conversation AS (
        INSERT INTO conversations ({", ".join(CONVERSATION_COLUMNS)})
        VALUES ($1, $2, $9, $10, $11, $3, $3, $12, $13)
        RETURNING id
    )"""
    + _MESSAGES_FROM_VALUES
)


def _with_earlier(statement: str) -> str:
    """Phase 1's INSERT with a client's history ahead of the turn's rows: one more parameter, a JSON
    array of rows, still one statement."""
    extra = max(int(n) for n in re.findall(r"\$(\d+)", statement)) + 1
    head = "FROM conversation CROSS JOIN (VALUES"
    assert head in statement
    return statement.replace(
        head,
        "FROM conversation CROSS JOIN (\n"
        "        SELECT e.id, e.role, e.content, 'complete', NULL::varchar, NULL::jsonb\n"
        f"        FROM jsonb_to_recordset(${extra}::jsonb) AS e(id uuid, role varchar, content jsonb)\n"
        "        UNION ALL VALUES",
    )


_OPEN_NEW_EARLIER = _with_earlier(_OPEN_NEW)


def _open_existing(history: str, dequeue: str = "") -> str:
    # The final SELECT reads the snapshot from before the statement: the history without the new turn.
    # $9 the agents the turn may continue with, $10 the default agent (a conversation bound to none).
    return (
        """
    WITH conversation AS (
        UPDATE conversations SET updated_at = $3::timestamptz
        WHERE id = $1 AND owner_id = $2 AND COALESCE(agent, $10::varchar) = ANY($9::varchar[])
        RETURNING id, system, COALESCE(agent, $10::varchar) AS agent
    ), turn AS ("""
        + _MESSAGES_FROM_VALUES
        + """)"""
        + dequeue
        + """
    SELECT conversation.system, conversation.agent, m.role, m.content,
        (SELECT COALESCE(c.agent, $10::varchar) FROM conversations AS c WHERE c.id = $1 AND c.owner_id = $2),
        m.id, m.status
    FROM (SELECT 1) AS one
        LEFT JOIN conversation ON true
        LEFT JOIN messages AS m ON m.conversation_id = conversation.id"""
        + history
        + """
    ORDER BY m.id
    """
    )


# The history read with the new turn: all of it; up to a given message (a caller continuing from
# an earlier answer); none (a caller that sends its own history).
_OPEN_EXISTING = _open_existing("")
_OPEN_EXISTING_UNTIL = _open_existing(" AND m.id <= $11::uuid")
_OPEN_EXISTING_BARE = _open_existing(" AND false")
# A queued message's turn (app/turns/queue.py): its queue row goes in the statement that stores it,
# only if the conversation was opened. Its id is the last parameter ($11; $12 after `until`).
_DEQUEUE = """, dequeued AS (
        DELETE FROM queued_messages WHERE id = ${n}::uuid AND conversation_id IN (SELECT id FROM conversation)
    )"""
_OPEN_EXISTING_DEQUEUE = _open_existing("", _DEQUEUE.format(n=11))
_OPEN_EXISTING_UNTIL_DEQUEUE = _open_existing(" AND m.id <= $11::uuid", _DEQUEUE.format(n=12))
_OPEN_EXISTING_BARE_DEQUEUE = _open_existing(" AND false", _DEQUEUE.format(n=11))
OUTCOME_COLUMNS = tuple(f.name for f in fields(Outcome))
_SET_OUTCOME = ", ".join(
    f"{name} = ${n}{'::jsonb' if name in _JSONB else ''}" for n, name in enumerate(OUTCOME_COLUMNS, start=1)
)
_N = len(OUTCOME_COLUMNS)
_RECORD = f"""
    UPDATE messages SET {_SET_OUTCOME}, updated_at = ${_N + 1}
    WHERE id = ${_N + 2} AND conversation_id = ${_N + 3}
"""


SPENT_COLUMNS = tuple(f.name for f in fields(Spent))
_SPENT_TYPES = ("uuid", "varchar", "varchar", "int", "bigint", "bigint", "bigint", "bigint")
# Phase 3 with the turn's usage: the UPDATE as a data-modifying CTE, the usage row inserted only if it
# matched (one statement still). $1..$N+3 as _RECORD; then the usage row's id and its columns.
_RECORD_SPENT = f"""
    WITH answer AS ({_RECORD.rstrip()}
        RETURNING id, updated_at
    )
    INSERT INTO model_usage (id, message_id, {", ".join(SPENT_COLUMNS)}, created_at)
    SELECT ${_N + 4}::uuid, answer.id,
        {", ".join(f"${n}::{t}" for n, t in enumerate(_SPENT_TYPES, start=_N + 5))}, answer.updated_at
    FROM answer
"""


def _unique_violation() -> type[Exception]:
    import asyncpg  # type: ignore[import-untyped]  # only Postgres gets here

    return asyncpg.UniqueViolationError  # type: ignore[no-any-return]


SUPERSEDED = "the user sent a new message instead"


def pending_calls(content: list[Block]) -> list[Block]:
    """The tool_use blocks of a paused answer that have no result yet."""
    answered = {b.get("tool_use_id") for b in content if b.get("type") == "tool_result"}
    return [b for b in content if b.get("type") == "tool_use" and b.get("id") not in answered]


def with_denials(content: list[Block], reason: str) -> list[Block]:
    """A paused answer's content with each of its pending calls denied, for `reason`."""
    return [*content, *(denied(call["id"], reason) for call in pending_calls(content))]


def _read_history(
    rows: Iterable[tuple[uuid.UUID, str, Any, str]],
) -> tuple[list[tuple[str, Any]], list[tuple[uuid.UUID, list[Block]]]]:
    """(role, content) rows for the model; a paused answer among them is superseded by the new message.
    A compaction among them folds what it covers into its summary (app/turns/compaction.py)."""
    earlier: list[tuple[Any, str, Any]] = []
    superseded: list[tuple[uuid.UUID, list[Block]]] = []
    for message_id, role, content, status in rows:
        if status == MessageStatus.AWAITING_APPROVAL:
            content = with_denials(_blocks(content), SUPERSEDED)
            superseded.append((message_id, content))
        earlier.append((message_id, role, content))
    return fold(earlier), superseded


def _blocks(content: Any) -> list[Block]:
    return list(json.loads(content) if isinstance(content, str) else content or [])


async def record_denied(tx: Tx, message_id: uuid.UUID, content: list[Block], stop_reason: str) -> bool:
    """A paused answer recorded with its pending calls denied (`content` holds the denials); False if
    it was not paused any more."""
    stmt = (
        update(Message)
        .where(Message.id == message_id, Message.status == MessageStatus.AWAITING_APPROVAL)
        .values(status=MessageStatus.COMPLETE, content=content, stop_reason=stop_reason, updated_at=utcnow())
    )
    return bool((await tx.conn.execute(stmt)).rowcount)


def _as_json(value: object) -> str | None:
    return json.dumps(value, ensure_ascii=False) if value is not None else None


class PostgresTurns:
    """The phases on Postgres: one statement each, run by asyncpg on a pooled connection."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    @staticmethod
    def _messages(conversation_id: uuid.UUID, owner_id: uuid.UUID, m: NewMessages) -> tuple[Any, ...]:
        return (conversation_id, owner_id, m.now, m.user_id, m.content, m.assistant_id, m.model, m.attributes)

    async def open_new(self, new: NewConversation) -> None:
        args = self._messages(new.opened.conversation_id, new.opening.owner_id, new.messages)
        try:
            earlier = new.messages.earlier
            statement, more = (_OPEN_NEW, ()) if earlier is None else (_OPEN_NEW_EARLIER, (earlier,))
            await self.driver.execute(
                statement, *args, new.title, new.system, new.agent, new.external_id, new.end_user, *more
            )
        except _unique_violation() as exc:  # only a client's id can collide: another turn just opened it
            raise ConversationBusy() from exc

    async def open_existing(
        self,
        opening: Opening,
        *,
        conversation_id: uuid.UUID,
        agents: AgentFilter,
        until: uuid.UUID | None = None,
        read_history: bool = True,
        dequeue: uuid.UUID | None = None,
    ) -> OpenedTurn | NotOpened:
        messages = NewMessages.of(opening)
        args = (*self._messages(conversation_id, opening.owner_id, messages), agents.names, agents.default)
        if dequeue is not None:
            if not read_history:
                rows = await self.driver.fetch(_OPEN_EXISTING_BARE_DEQUEUE, *args, dequeue)
            elif until is not None:
                rows = await self.driver.fetch(_OPEN_EXISTING_UNTIL_DEQUEUE, *args, until, dequeue)
            else:
                rows = await self.driver.fetch(_OPEN_EXISTING_DEQUEUE, *args, dequeue)
        elif not read_history:
            rows = await self.driver.fetch(_OPEN_EXISTING_BARE, *args)
        elif until is not None:
            rows = await self.driver.fetch(_OPEN_EXISTING_UNTIL, *args, until)
        else:
            rows = await self.driver.fetch(_OPEN_EXISTING, *args)
        first = rows[0]  # always one row at least: the conversation's, or the reason there is none
        if first[1] is None:
            return NotOpened(first[4])
        earlier, superseded = _read_history((row[5], row[2], row[3], row[6]) for row in rows if row[2] is not None)
        opened = OpenedTurn(conversation_id, messages.assistant_id, messages.now, first[0], earlier, first[1])
        return replace(opened, superseded=superseded)

    async def record(
        self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, outcome: Outcome, spent: Spent | None = None
    ) -> None:
        o = outcome.cleaned()
        values = [_as_json(getattr(o, name)) if name in _JSONB else getattr(o, name) for name in OUTCOME_COLUMNS]
        if spent is None:
            await self.driver.execute(_RECORD, *values, utcnow(), message_id, conversation_id)
            return
        usage = (getattr(spent, name) for name in SPENT_COLUMNS)
        await self.driver.execute(_RECORD_SPENT, *values, utcnow(), message_id, conversation_id, uuid7(), *usage)


class SqliteTurns:
    """The phases on SQLite (the embedded default, one writer): no data-modifying CTEs, so the same
    steps as separate statements, in the one transaction the phase opened."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def open_new(self, new: NewConversation) -> None:
        m, conversation_id = new.messages, new.opened.conversation_id
        try:
            await self.conn.execute(
                insert(Conversation).values(
                    id=conversation_id, owner_id=new.opening.owner_id, title=new.title, system=new.system,
                    agent=new.agent, created_at=m.now, updated_at=m.now, external_id=new.external_id,
                    end_user=new.end_user,
                )
            )  # fmt: skip
        except IntegrityError as exc:  # only a client's id can collide: another turn just opened it
            raise ConversationBusy() from exc
        await self._insert_messages(conversation_id, m)

    async def open_existing(
        self,
        opening: Opening,
        *,
        conversation_id: uuid.UUID,
        agents: AgentFilter,
        until: uuid.UUID | None = None,
        read_history: bool = True,
        dequeue: uuid.UUID | None = None,
    ) -> OpenedTurn | NotOpened:
        messages = NewMessages.of(opening)
        owned = Conversation.id == conversation_id, Conversation.owner_id == opening.owner_id
        found = (await self.conn.execute(select(Conversation.system, Conversation.agent).where(*owned))).first()
        if found is None:
            return NotOpened(None)
        if (found.agent or agents.default) not in agents.names:
            return NotOpened(found.agent or agents.default)
        history = select(Message.id, Message.role, Message.content, Message.status).where(
            Message.conversation_id == conversation_id
        )
        if until is not None:
            history = history.where(Message.id <= until)
        rows = (await self.conn.execute(history.order_by(Message.id))).all() if read_history else []
        earlier, superseded = _read_history(tuple(row) for row in rows)
        await self.conn.execute(update(Conversation).where(*owned).values(updated_at=messages.now))
        await self._insert_messages(conversation_id, messages)
        if dequeue is not None:  # in the same transaction as the messages
            await self.conn.execute(delete(QueuedMessage).where(QueuedMessage.id == dequeue))
        agent = found.agent or agents.default
        opened = OpenedTurn(conversation_id, messages.assistant_id, messages.now, found.system, earlier, agent)
        return replace(opened, superseded=superseded)

    async def _insert_messages(self, conversation_id: uuid.UUID, m: NewMessages) -> None:
        common = {
            "conversation_id": conversation_id,
            "created_at": m.now,
            "updated_at": m.now,
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
            "cache_creation_tokens": 0,
        }
        user = {"id": m.user_id, "role": "user", "status": "complete", "model": None, "attributes": None}
        user["content"] = json.loads(m.content)
        assistant = {"id": m.assistant_id, "role": "assistant", "status": "in_progress"}
        attributes = json.loads(m.attributes) if m.attributes is not None else None
        assistant |= {"content": [], "model": m.model, "attributes": attributes}
        earlier = [
            common | row | {"id": uuid.UUID(row["id"]), "status": "complete", "model": None, "attributes": None}
            for row in (json.loads(m.earlier) if m.earlier is not None else [])
        ]
        await self.conn.execute(insert(Message), [*earlier, common | user, common | assistant])

    async def record(
        self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, outcome: Outcome, spent: Spent | None = None
    ) -> None:
        owned = Message.id == message_id, Message.conversation_id == conversation_id
        cleaned = outcome.cleaned()
        values: dict[str, Any] = {name: getattr(cleaned, name) for name in OUTCOME_COLUMNS}
        values["error"] = values["error"] if values["error"] is not None else null()  # SQL NULL, not JSON null
        now = utcnow()
        result = await self.conn.execute(update(Message).where(*owned).values(**values, updated_at=now))
        if spent is not None and result.rowcount:  # the usage row, in the same transaction
            usage = {name: getattr(spent, name) for name in SPENT_COLUMNS}
            row = {"id": uuid7(), "message_id": message_id, "created_at": now, **usage}
            await self.conn.execute(insert(ModelUsage).values(**row))


# Where a turn continues (each indexed, each owner-scoped): the conversation of an answer, by its id
# or by the key of the exchange up to it (the most recent, should two conversations share one).
_OWNED = Conversation.id == Message.conversation_id, Conversation.owner_id == bindparam("owner_id", type_=Uuid())
_CONVERSATION_OF_ANSWER = select(Message.conversation_id).where(
    Message.id == bindparam("message_id", type_=Uuid()), Message.role == "assistant", *_OWNED
)
_ANSWER_CONTENT = select(Message.conversation_id, Message.content).where(
    Message.id == bindparam("message_id", type_=Uuid()), Message.role == "assistant", *_OWNED
)
_CONVERSATION_WITH_KEY = (
    select(Message.conversation_id)
    .where(
        Message.history_key == bindparam("history_key"),
        *_OWNED,
        func.coalesce(Conversation.agent, bindparam("default_agent")).in_(bindparam("agents", expanding=True)),
    )
    .order_by(Message.id.desc())
    .limit(1)
)


_CONVERSATION_WITH_EXTERNAL_ID = select(Conversation.id).where(
    Conversation.owner_id == bindparam("owner_id", type_=Uuid()), Conversation.external_id == bindparam("external_id")
)


class TurnRepository:
    """Where a turn continues when the caller does not name its conversation (both databases)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def conversation_of_answer(self, message_id: uuid.UUID, *, owner_id: uuid.UUID) -> uuid.UUID | None:
        params = {"message_id": message_id, "owner_id": owner_id}
        return (await self.conn.execute(_CONVERSATION_OF_ANSWER, params)).scalar_one_or_none()

    async def open_calls_of_answer(
        self, message_id: uuid.UUID, *, owner_id: uuid.UUID
    ) -> tuple[uuid.UUID | None, set[str]]:
        """The answer's conversation (None: not this owner's) and its calls still without a result."""
        params = {"message_id": message_id, "owner_id": owner_id}
        row = (await self.conn.execute(_ANSWER_CONTENT, params)).first()
        if row is None:
            return None, set()
        blocks = [b for b in row.content or [] if isinstance(b, dict)]
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        calls = {b["id"] for b in blocks if b.get("type") == "tool_use" and b.get("id") not in answered}
        return row.conversation_id, calls

    async def conversation_with_key(
        self, history_key: str, *, owner_id: uuid.UUID, agents: AgentFilter
    ) -> uuid.UUID | None:
        params = {
            "history_key": history_key,
            "owner_id": owner_id,
            "agents": agents.names,
            "default_agent": agents.default,
        }
        return (await self.conn.execute(_CONVERSATION_WITH_KEY, params)).scalar_one_or_none()

    async def conversation_with_external_id(self, external_id: str, *, owner_id: uuid.UUID) -> uuid.UUID | None:
        params = {"external_id": clean_text(external_id), "owner_id": owner_id}
        return (await self.conn.execute(_CONVERSATION_WITH_EXTERNAL_ID, params)).scalar_one_or_none()
