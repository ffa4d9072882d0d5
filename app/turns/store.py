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
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Uuid, bindparam, insert, null, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.db import Driver, Tx
from app.core.ids import uuid7
from app.core.text import clean, clean_text
from app.llm.base import Block
from app.models import Conversation, Message
from app.models.base import utcnow


@dataclass(frozen=True, slots=True)
class OpenedTurn:
    """What phase 1 stored and read: the conversation, the assistant placeholder, the history before it."""

    conversation_id: uuid.UUID
    assistant_id: uuid.UUID
    created_at: datetime
    system: str | None
    earlier: list[tuple[str, Any]]


@dataclass(frozen=True, slots=True)
class Opening:
    """What phase 1 stores in either case: the owner's user message, and the answer's placeholder."""

    owner_id: uuid.UUID
    content: list[Block]
    model: str
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
    model: str
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
    messages: NewMessages
    opened: OpenedTurn


def new_conversation(opening: Opening, *, title: str, system: str | None) -> NewConversation:
    title, system = clean_text(title), clean_text(system) if system is not None else None
    messages, conversation_id = NewMessages.of(opening), uuid7()
    opened = OpenedTurn(conversation_id, messages.assistant_id, messages.now, system, [])
    return NewConversation(opening, title, system, messages, opened)


@dataclass(frozen=True, slots=True)
class Outcome:
    """Phase 3's parameters: what an answer's row records. Each field is the `messages` column it sets."""

    status: str
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


class TurnStore(Protocol):
    async def open_new(self, new: NewConversation) -> None: ...

    async def open_existing(
        self, opening: Opening, *, conversation_id: uuid.UUID, until: uuid.UUID | None = None, read_history: bool = True
    ) -> OpenedTurn | None:
        """None when the conversation does not exist or is not this owner's (nothing is stored then).

        The history read is the conversation's, or only up to `until`, or none (`read_history=False`).
        """

    async def record(self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, outcome: Outcome) -> None:
        """Phase 3: record an assistant message's outcome; scoped to its conversation (owned by the caller)."""


def turn_store(tx: Tx) -> TurnStore:
    """The phases' SQL inside a transaction a phase opened."""
    return PostgresTurns(tx.driver) if tx.driver is not None else SqliteTurns(tx.conn)


# The columns the written-out statements name (tests/turns pins them to the models).
MESSAGE_COLUMNS = (
    "id", "conversation_id", "role", "content", "status", "model", "attributes", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_creation_tokens", "created_at", "updated_at",
)  # fmt: skip
CONVERSATION_COLUMNS = ("id", "owner_id", "title", "system", "created_at", "updated_at")
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
        VALUES ($1, $2, $9, $10, $3, $3)
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


def _open_existing(history: str) -> str:
    # The final SELECT reads the snapshot from before the statement: the history without the new turn.
    return (
        """
    WITH conversation AS (
        UPDATE conversations SET updated_at = $3::timestamptz
        WHERE id = $1 AND owner_id = $2
        RETURNING id, system
    ), turn AS ("""
        + _MESSAGES_FROM_VALUES
        + """)
    SELECT conversation.system, m.role, m.content
    FROM conversation LEFT JOIN messages AS m ON m.conversation_id = conversation.id"""
        + history
        + """
    ORDER BY m.id
    """
    )


# The history read with the new turn: all of it; up to a given message (a caller continuing from
# an earlier answer); none (a caller that sends its own history).
_OPEN_EXISTING = _open_existing("")
_OPEN_EXISTING_UNTIL = _open_existing(" AND m.id <= $9::uuid")
_OPEN_EXISTING_BARE = _open_existing(" AND false")
OUTCOME_COLUMNS = tuple(f.name for f in fields(Outcome))
_SET_OUTCOME = ", ".join(
    f"{name} = ${n}{'::jsonb' if name in _JSONB else ''}" for n, name in enumerate(OUTCOME_COLUMNS, start=1)
)
_N = len(OUTCOME_COLUMNS)
_RECORD = f"""
    UPDATE messages SET {_SET_OUTCOME}, updated_at = ${_N + 1}
    WHERE id = ${_N + 2} AND conversation_id = ${_N + 3}
"""


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
        earlier = new.messages.earlier
        statement, more = (_OPEN_NEW, ()) if earlier is None else (_OPEN_NEW_EARLIER, (earlier,))
        await self.driver.execute(statement, *args, new.title, new.system, *more)

    async def open_existing(
        self, opening: Opening, *, conversation_id: uuid.UUID, until: uuid.UUID | None = None, read_history: bool = True
    ) -> OpenedTurn | None:
        messages = NewMessages.of(opening)
        args = self._messages(conversation_id, opening.owner_id, messages)
        if not read_history:
            rows = await self.driver.fetch(_OPEN_EXISTING_BARE, *args)
        elif until is not None:
            rows = await self.driver.fetch(_OPEN_EXISTING_UNTIL, *args, until)
        else:
            rows = await self.driver.fetch(_OPEN_EXISTING, *args)
        if not rows:
            return None
        earlier = [(row[1], row[2]) for row in rows if row[1] is not None]
        return OpenedTurn(conversation_id, messages.assistant_id, messages.now, rows[0][0], earlier)

    async def record(self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, outcome: Outcome) -> None:
        o = outcome.cleaned()
        values = [_as_json(getattr(o, name)) if name in _JSONB else getattr(o, name) for name in OUTCOME_COLUMNS]
        await self.driver.execute(_RECORD, *values, utcnow(), message_id, conversation_id)


class SqliteTurns:
    """The phases on SQLite (the embedded default, one writer): no data-modifying CTEs, so the same
    steps as separate statements, in the one transaction the phase opened."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def open_new(self, new: NewConversation) -> None:
        m, conversation_id = new.messages, new.opened.conversation_id
        await self.conn.execute(
            insert(Conversation).values(
                id=conversation_id, owner_id=new.opening.owner_id, title=new.title, system=new.system,
                created_at=m.now, updated_at=m.now,
            )
        )  # fmt: skip
        await self._insert_messages(conversation_id, m)

    async def open_existing(
        self, opening: Opening, *, conversation_id: uuid.UUID, until: uuid.UUID | None = None, read_history: bool = True
    ) -> OpenedTurn | None:
        messages = NewMessages.of(opening)
        owned = Conversation.id == conversation_id, Conversation.owner_id == opening.owner_id
        system = (await self.conn.execute(select(Conversation.system).where(*owned))).first()
        if system is None:
            return None
        history = select(Message.role, Message.content).where(Message.conversation_id == conversation_id)
        if until is not None:
            history = history.where(Message.id <= until)
        earlier = (
            [(role, content) for role, content in (await self.conn.execute(history.order_by(Message.id))).all()]
            if read_history
            else []
        )
        await self.conn.execute(update(Conversation).where(*owned).values(updated_at=messages.now))
        await self._insert_messages(conversation_id, messages)
        return OpenedTurn(conversation_id, messages.assistant_id, messages.now, system[0], earlier)

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

    async def record(self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, outcome: Outcome) -> None:
        owned = Message.id == message_id, Message.conversation_id == conversation_id
        cleaned = outcome.cleaned()
        values: dict[str, Any] = {name: getattr(cleaned, name) for name in OUTCOME_COLUMNS}
        values["error"] = values["error"] if values["error"] is not None else null()  # SQL NULL, not JSON null
        await self.conn.execute(update(Message).where(*owned).values(**values, updated_at=utcnow()))


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
    .where(Message.history_key == bindparam("history_key"), *_OWNED)
    .order_by(Message.id.desc())
    .limit(1)
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

    async def conversation_with_key(self, history_key: str, *, owner_id: uuid.UUID) -> uuid.UUID | None:
        params = {"history_key": history_key, "owner_id": owner_id}
        return (await self.conn.execute(_CONVERSATION_WITH_KEY, params)).scalar_one_or_none()
