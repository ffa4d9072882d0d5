"""SQL of the Responses routes: a response is an assistant message (its id), owner-scoped in every query."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Uuid, bindparam, delete, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.llm.base import Block, Usage
from app.models import Conversation, Message
from app.models.conversations import MessageStatus

_OWNED = Conversation.id == Message.conversation_id, Conversation.owner_id == bindparam("owner_id", type_=Uuid())
_ANSWER = select(
    Message.id,
    Message.conversation_id,
    Message.status,
    Message.content,
    Message.stop_reason,
    Message.error,
    Message.attributes,
    Message.created_at,
    Message.input_tokens,
    Message.output_tokens,
    Message.cache_read_tokens,
    Message.cache_creation_tokens,
).where(Message.id == bindparam("message_id", type_=Uuid()), Message.role == "assistant", *_OWNED)
# The user's side of the turn: the user message just before the answer.
_QUESTION = (
    select(Message.id, Message.content)
    .where(
        Message.conversation_id == bindparam("conversation_id", type_=Uuid()),
        Message.role == "user",
        Message.id < bindparam("message_id", type_=Uuid()),
    )
    .order_by(Message.id.desc())
    .limit(1)
)


@dataclass(frozen=True, slots=True)
class StoredAnswer:
    id: uuid.UUID
    conversation_id: uuid.UUID
    status: str
    content: list[Block]
    stop_reason: str | None
    error: dict[str, Any] | None
    attributes: dict[str, Any]
    created_at: datetime
    usage: Usage

    @classmethod
    def of(cls, row: Row[Any]) -> StoredAnswer:
        used = Usage(row.input_tokens, row.output_tokens, row.cache_read_tokens, row.cache_creation_tokens)
        return cls(
            row.id,
            row.conversation_id,
            row.status,
            row.content or [],
            row.stop_reason,
            row.error,
            row.attributes or {},
            row.created_at,
            used,
        )

    @property
    def running(self) -> bool:
        return self.status == MessageStatus.IN_PROGRESS


async def get_answer(conn: AsyncConnection, message_id: uuid.UUID, *, owner_id: uuid.UUID) -> StoredAnswer | None:
    row = (await conn.execute(_ANSWER, {"message_id": message_id, "owner_id": owner_id})).first()
    return StoredAnswer.of(row) if row is not None else None


async def get_question(conn: AsyncConnection, answer: StoredAnswer) -> tuple[uuid.UUID, list[Block]] | None:
    params = {"conversation_id": answer.conversation_id, "message_id": answer.id}
    row = (await conn.execute(_QUESTION, params)).first()
    return (row.id, row.content or []) if row is not None else None


async def delete_turn(conn: AsyncConnection, answer: StoredAnswer) -> None:
    """The answer and its question go; so does the conversation if nothing else is left in it."""
    question = await get_question(conn, answer)
    ids = [answer.id] if question is None else [answer.id, question[0]]
    await conn.execute(delete(Message).where(Message.id.in_(ids), Message.conversation_id == answer.conversation_id))
    left = select(func.count()).select_from(Message).where(Message.conversation_id == answer.conversation_id)
    if not (await conn.execute(left)).scalar_one():
        await conn.execute(delete(Conversation).where(Conversation.id == answer.conversation_id))
