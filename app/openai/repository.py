"""SQL of the Responses routes: a response is an assistant message (its id), owner-scoped in every query."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Text, Uuid, bindparam, cast, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from app.conversations.repository import delete_messages
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
# A turn's input: the rows its phase 1 stored ahead of the answer, in the one statement that gave
# them all one timestamp (the user's message, and the history a client sent to open the conversation).
_INPUT = (
    select(Message.id, Message.role, Message.content)
    .where(
        Message.conversation_id == bindparam("conversation_id", type_=Uuid()),
        Message.id < bindparam("message_id", type_=Uuid()),
        Message.created_at == bindparam("created_at"),
    )
    .order_by(Message.id)
)
# Where the items an `item_reference` names may be: rows by id, or rows whose blocks name a call id
# (a text search, checked block by block after; owner-scoped, the newest first).
_REFERENCED_LIMIT = 200


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


@dataclass(frozen=True, slots=True)
class StoredRow:
    id: uuid.UUID
    role: str
    content: list[Block]


async def get_input(conn: AsyncConnection, answer: StoredAnswer) -> list[StoredRow]:
    """The turn's input, oldest first: its user message, after the client's history if it sent one."""
    params = {"conversation_id": answer.conversation_id, "message_id": answer.id, "created_at": answer.created_at}
    return [StoredRow(row.id, row.role, row.content or []) for row in await conn.execute(_INPUT, params)]


async def referenced_rows(
    conn: AsyncConnection, *, message_ids: Iterable[uuid.UUID], call_ids: Iterable[str], owner_id: uuid.UUID
) -> list[StoredRow]:
    """The owner's rows with these ids or naming these call ids (ids of 1-256 letters, digits, '_', '-')."""
    named = [cast(Message.content, Text).contains(f'"{call_id}"', autoescape=True) for call_id in call_ids]
    query = (
        select(Message.id, Message.role, Message.content)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Conversation.owner_id == owner_id, or_(Message.id.in_(list(message_ids)), *named))
        .order_by(Message.id.desc())
        .limit(_REFERENCED_LIMIT)
    )
    return [StoredRow(row.id, row.role, row.content or []) for row in await conn.execute(query)]


async def delete_turn(conn: AsyncConnection, answer: StoredAnswer) -> None:
    """The answer and its input go; so does the conversation if nothing else is left in it."""
    ids = [answer.id, *(row.id for row in await get_input(conn, answer))]
    await delete_messages(conn, answer.conversation_id, ids)
    left = select(func.count()).select_from(Message).where(Message.conversation_id == answer.conversation_id)
    if not (await conn.execute(left)).scalar_one():
        await conn.execute(delete(Conversation).where(Conversation.id == answer.conversation_id))


async def paused_answer_with_call(conn: AsyncConnection, call_id: str, *, owner_id: uuid.UUID) -> uuid.UUID | None:
    """The owner's answer paused for approval that holds this call (an mcp_approval_request's
    `mcpr_<call id>`): a text search among paused answers only (a partial index holds them), then
    checked block by block. Call ids are 1-256 letters, digits, '_' and '-'."""
    query = (
        select(Message.id, Message.content)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            Conversation.owner_id == owner_id,
            Message.status == MessageStatus.AWAITING_APPROVAL,
            cast(Message.content, Text).contains(f'"{call_id}"', autoescape=True),
        )
        .order_by(Message.id.desc())
        .limit(_REFERENCED_LIMIT)
    )
    for row in await conn.execute(query):
        if any(isinstance(b, dict) and b.get("type") == "tool_use" and b.get("id") == call_id for b in row.content):
            return row.id  # type: ignore[no-any-return]
    return None
