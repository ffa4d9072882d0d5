"""The SQL of a turn's phases (TurnRepository): one statement per phase on Postgres."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import TextClause, Uuid, bindparam, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.core.ids import uuid7
from app.core.text import clean, clean_text
from app.llm.base import Block
from app.models import Conversation, Message
from app.models.base import JSONType, NullableJSON, UTCDateTime, utcnow


@dataclass(frozen=True, slots=True)
class OpenedTurn:
    """What phase 1 stored and read: the conversation, the assistant placeholder, the history before it."""

    conversation_id: uuid.UUID
    assistant_id: uuid.UUID
    created_at: datetime
    system: str | None
    earlier: list[tuple[str, Any]]


# Phase 1 on Postgres is one statement, so it holds a connection for one round trip and is its own
# transaction. The two messages come from VALUES joined to the conversation row, so nothing is
# inserted unless that row exists and is owned; the final SELECT reads the snapshot from before
# the statement, i.e. the history without the new turn.
_MESSAGES_FROM_VALUES = """
    INSERT INTO messages (id, conversation_id, role, content, status, model, attributes, input_tokens,
                          output_tokens, cache_read_tokens, cache_creation_tokens, created_at, updated_at)
    SELECT m.id, conversation.id, m.role, m.content, m.status, m.model, m.attributes, 0, 0, 0, 0, :now, :now
    FROM conversation CROSS JOIN (VALUES
        (CAST(:user_id AS uuid), 'user', CAST(:content AS jsonb), 'complete', CAST(NULL AS varchar),
         CAST(NULL AS jsonb)),
        (CAST(:assistant_id AS uuid), 'assistant', CAST('[]' AS jsonb), 'in_progress', CAST(:model AS varchar),
         CAST(:attributes AS jsonb))
    ) AS m(id, role, content, status, model, attributes)
"""
_OPEN_NEW_PG = text(
    """
    WITH conversation AS (
        INSERT INTO conversations (id, owner_id, title, system, created_at, updated_at)
        VALUES (:conversation_id, :owner_id, :title, :system, :now, :now)
        RETURNING id
    )"""
    + _MESSAGES_FROM_VALUES
)


def _open_existing_pg(history: str) -> TextClause:
    return text(
        """
    WITH conversation AS (
        UPDATE conversations SET updated_at = :now
        WHERE id = :conversation_id AND owner_id = :owner_id
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
_OPEN_EXISTING_PG = _open_existing_pg("")
_OPEN_EXISTING_UNTIL_PG = _open_existing_pg(" AND m.id <= CAST(:until AS uuid)")
_OPEN_EXISTING_BARE_PG = _open_existing_pg(" AND false")


# Built once: a statement constructed per call costs more CPU than its round trip.
_RECORD = text(
    """
    UPDATE messages SET status = :status, content = :content, stop_reason = :stop_reason, error = :error,
        input_tokens = :input_tokens, output_tokens = :output_tokens, cache_read_tokens = :cache_read_tokens,
        cache_creation_tokens = :cache_creation_tokens, history_key = :history_key, updated_at = :now
    WHERE id = :message_id AND conversation_id = :conversation_id
    """
).bindparams(
    bindparam("content", type_=JSONType),
    bindparam("error", type_=NullableJSON),
    bindparam("now", type_=UTCDateTime()),
    bindparam("message_id", type_=Uuid()),
    bindparam("conversation_id", type_=Uuid()),
)
# Where a turn continues (each indexed, each owner-scoped): the conversation of an answer, by its id
# or by the key of the exchange up to it (the most recent, should two conversations share one).
_OWNED = Conversation.id == Message.conversation_id, Conversation.owner_id == bindparam("owner_id", type_=Uuid())
_CONVERSATION_OF_ANSWER = select(Message.conversation_id).where(
    Message.id == bindparam("message_id", type_=Uuid()), Message.role == "assistant", *_OWNED
)
_CONVERSATION_WITH_KEY = (
    select(Message.conversation_id)
    .where(Message.history_key == bindparam("history_key"), *_OWNED)
    .order_by(Message.id.desc())
    .limit(1)
)


class TurnRepository:
    """The SQL of a turn's phases, on a bare connection (no ORM unit of work on the hot path).

    Postgres: one statement per phase. SQLite (the embedded default, one writer) has no
    data-modifying CTEs, so it runs the same steps as separate statements in one transaction.
    """

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"

    @staticmethod
    def _ids(content: list[Block], model: str, attributes: dict[str, Any] | None) -> dict[str, Any]:
        # UUIDv7, taken in this order: the user's message sorts before the assistant's.
        user_id, assistant_id = uuid7(), uuid7()
        return {
            "user_id": user_id,
            "assistant_id": assistant_id,
            "content": json.dumps(clean(content), ensure_ascii=False),
            "model": model,
            "attributes": json.dumps(clean(attributes), ensure_ascii=False) if attributes is not None else None,
            "now": utcnow(),
        }

    async def conversation_of_answer(self, message_id: uuid.UUID, *, owner_id: uuid.UUID) -> uuid.UUID | None:
        params = {"message_id": message_id, "owner_id": owner_id}
        return (await self.conn.execute(_CONVERSATION_OF_ANSWER, params)).scalar_one_or_none()

    async def conversation_with_key(self, history_key: str, *, owner_id: uuid.UUID) -> uuid.UUID | None:
        params = {"history_key": history_key, "owner_id": owner_id}
        return (await self.conn.execute(_CONVERSATION_WITH_KEY, params)).scalar_one_or_none()

    async def open_new(
        self,
        *,
        owner_id: uuid.UUID,
        title: str,
        system: str | None,
        content: list[Block],
        model: str,
        attributes: dict[str, Any] | None = None,
    ) -> OpenedTurn:
        # Requests are validated (422); cleaning here keeps any other caller from a 500 in Postgres.
        title, system = clean_text(title), clean_text(system) if system is not None else None
        params = {**self._ids(content, model, attributes), "conversation_id": uuid7(), "owner_id": owner_id}
        params["title"] = title
        if self.postgres:
            await self.conn.execute(_OPEN_NEW_PG, {**params, "system": system})
        else:
            await self.conn.execute(
                insert(Conversation).values(
                    id=params["conversation_id"],
                    owner_id=owner_id,
                    title=title,
                    system=system,
                    created_at=params["now"],
                    updated_at=params["now"],
                )
            )
            await self._insert_messages(params["conversation_id"], params)
        return OpenedTurn(params["conversation_id"], params["assistant_id"], params["now"], system, [])

    async def open_existing(
        self,
        *,
        conversation_id: uuid.UUID,
        owner_id: uuid.UUID,
        content: list[Block],
        model: str,
        attributes: dict[str, Any] | None = None,
        until: uuid.UUID | None = None,
        read_history: bool = True,
    ) -> OpenedTurn | None:
        """None when the conversation does not exist or is not this owner's (nothing is stored then).

        The history read is the conversation's, or only up to `until`, or none (`read_history=False`).
        """
        params = {**self._ids(content, model, attributes), "conversation_id": conversation_id, "owner_id": owner_id}
        if self.postgres:
            statement = _OPEN_EXISTING_PG if until is None else _OPEN_EXISTING_UNTIL_PG
            statement = statement if read_history else _OPEN_EXISTING_BARE_PG
            rows = (await self.conn.execute(statement, {**params, "until": until})).all()
            if not rows:
                return None
            earlier = [(role, content) for _, role, content in rows if role is not None]
            return OpenedTurn(conversation_id, params["assistant_id"], params["now"], rows[0][0], earlier)
        owned = Conversation.id == conversation_id, Conversation.owner_id == owner_id
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
        await self.conn.execute(update(Conversation).where(*owned).values(updated_at=params["now"]))
        await self._insert_messages(conversation_id, params)
        return OpenedTurn(conversation_id, params["assistant_id"], params["now"], system[0], earlier)

    async def _insert_messages(self, conversation_id: uuid.UUID, params: dict[str, Any]) -> None:
        common = {
            "conversation_id": conversation_id,
            "created_at": params["now"],
            "updated_at": params["now"],
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
            "cache_creation_tokens": 0,
        }
        user = {"id": params["user_id"], "role": "user", "status": "complete", "model": None, "attributes": None}
        user["content"] = json.loads(params["content"])
        assistant = {"id": params["assistant_id"], "role": "assistant", "status": "in_progress"}
        attributes = json.loads(params["attributes"]) if params["attributes"] is not None else None
        assistant |= {"content": [], "model": params["model"], "attributes": attributes}
        await self.conn.execute(insert(Message), [common | user, common | assistant])

    async def record(self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, **values: Any) -> None:
        """Phase 3: record an assistant message's outcome; scoped to its conversation (owned by the caller)."""
        # Model output and tool results may hold NUL or lone surrogates, which Postgres refuses: an
        # answer that cannot be stored would stay `in_progress` for good.
        values = {name: clean(value) for name, value in values.items()}
        params = {"error": None, "history_key": None, **values, "message_id": message_id}
        params["conversation_id"] = conversation_id
        await self.conn.execute(_RECORD, {**params, "now": utcnow()})
