"""SQL of the Conversations API: agentchat's conversations and message rows, owner-scoped in every query."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from app.conversations.branches import branch, latest_leaf
from app.conversations.repository import delete_messages, latest_message
from app.core.db import Transactions
from app.core.ids import uuid7
from app.core.text import clean
from app.models import Conversation, Message
from app.models.base import utcnow
from app.models.conversations import MessageStatus
from app.openai.conversation_items import Row, StoredRow


@dataclass(frozen=True, slots=True)
class StoredConversation:
    id: uuid.UUID
    created_at: datetime
    attributes: dict[str, Any] | None


_CONVERSATION = select(Conversation.id, Conversation.created_at, Conversation.attributes)


def _owned(conversation_id: uuid.UUID, owner_id: uuid.UUID) -> tuple[Any, ...]:
    return Conversation.id == conversation_id, Conversation.owner_id == owner_id


async def get_conversation(
    conn: AsyncConnection, conversation_id: uuid.UUID, *, owner_id: uuid.UUID
) -> StoredConversation | None:
    row = (await conn.execute(_CONVERSATION.where(*_owned(conversation_id, owner_id)))).first()
    return StoredConversation(row.id, row.created_at, row.attributes) if row is not None else None


async def _insert_rows(conn: AsyncConnection, conversation_id: uuid.UUID, rows: Sequence[Row]) -> list[StoredRow]:
    """Rows added by a client: each complete, in order (UUIDv7 ids), none of them a model's answer."""
    if not rows:
        return []
    now = utcnow()
    stored = [StoredRow(uuid7(), role, clean(blocks), MessageStatus.COMPLETE) for role, blocks in rows]
    # Below the conversation's latest message, one after the other: they continue its current branch.
    parents = [await latest_message(conn, conversation_id), *(row.id for row in stored[:-1])]
    values = [
        {
            "id": row.id,
            "conversation_id": conversation_id,
            "parent_id": parent,
            "role": row.role,
            "content": row.content,
            "status": row.status,
            "model": None,
            "attributes": None,
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
            "cache_creation_tokens": 0,
            "created_at": now,
            "updated_at": now,
        }
        for row, parent in zip(stored, parents, strict=True)
    ]
    await conn.execute(insert(Message), values)
    return stored


async def create_conversation(
    conn: AsyncConnection,
    *,
    owner_id: uuid.UUID,
    title: str,
    system: str | None,
    metadata: dict[str, str] | None,
    rows: Sequence[Row],
) -> tuple[StoredConversation, list[StoredRow]]:
    """A conversation with its first items (in the caller's transaction)."""
    id_, now = uuid7(), utcnow()
    attributes = clean({"metadata": metadata}) if metadata else None
    await conn.execute(
        insert(Conversation).values(
            id=id_, owner_id=owner_id, title=clean(title), system=clean(system), attributes=attributes,
            created_at=now, updated_at=now,
        )
    )  # fmt: skip
    return StoredConversation(id_, now, attributes), await _insert_rows(conn, id_, rows)


async def set_metadata(
    conn: AsyncConnection, conversation_id: uuid.UUID, metadata: dict[str, str] | None, *, owner_id: uuid.UUID
) -> StoredConversation | None:
    """Replace the conversation's metadata (in the caller's transaction)."""
    found = await get_conversation(conn, conversation_id, owner_id=owner_id)
    if found is None:
        return None
    attributes = {**(found.attributes or {}), "metadata": clean(metadata) or {}}
    await conn.execute(
        update(Conversation)
        .where(*_owned(conversation_id, owner_id))
        .values(attributes=attributes, updated_at=utcnow())
    )
    return StoredConversation(found.id, found.created_at, attributes)


async def delete_conversation(conn: AsyncConnection, conversation_id: uuid.UUID, *, owner_id: uuid.UUID) -> bool:
    owned = select(Conversation.id).where(*_owned(conversation_id, owner_id))
    # Messages first: SQLite only cascades with foreign_keys=ON, and we do not rely on it.
    await conn.execute(delete(Message).where(Message.conversation_id.in_(owned)))
    result = await conn.execute(delete(Conversation).where(*_owned(conversation_id, owner_id)))
    return bool(result.rowcount)


async def list_rows(conn: AsyncConnection, conversation_id: uuid.UUID, *, owner_id: uuid.UUID) -> list[StoredRow]:
    """The conversation's current branch (its latest message's, app/conversations/branches.py)."""
    query = (
        select(Message.id, Message.parent_id, Message.role, Message.content, Message.status)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(Message.conversation_id == conversation_id, Conversation.owner_id == owner_id)
        .order_by(Message.id)
    )
    rows = (await conn.execute(query)).all()
    return [StoredRow(r.id, r.role, r.content or [], r.status) for r in branch(rows, latest_leaf(rows))]


async def add_rows(
    conn: AsyncConnection, conversation_id: uuid.UUID, rows: Sequence[Row], *, owner_id: uuid.UUID
) -> list[StoredRow] | None:
    """Rows appended to the owner's conversation (None: no such conversation), which counts as active."""
    touched = await conn.execute(
        update(Conversation).where(*_owned(conversation_id, owner_id)).values(updated_at=utcnow())
    )
    if not touched.rowcount:
        return None
    return await _insert_rows(conn, conversation_id, rows)


async def set_row_content(conn: AsyncConnection, row: StoredRow, conversation_id: uuid.UUID) -> None:
    """A row with some of its blocks taken out (an item deleted); gone when nothing is left."""
    owned = Message.id == row.id, Message.conversation_id == conversation_id
    if row.content:
        await conn.execute(update(Message).where(*owned).values(content=row.content, updated_at=utcnow()))
    else:
        await delete_messages(conn, conversation_id, [row.id])


async def bind_unanswered(
    transactions: Transactions, conversation_id: uuid.UUID, *, owner_id: uuid.UUID, agent: str
) -> bool:
    """Bind the owner's conversation to `agent` if it has no answer yet (made by POST /v1/conversations,
    bound to the default agent until a response names its own); False if it has one or is not found."""
    answered = exists().where(Message.conversation_id == conversation_id, Message.role == "assistant")
    bind = update(Conversation).where(*_owned(conversation_id, owner_id), ~answered).values(agent=agent)
    async with transactions() as tx:
        return bool((await tx.conn.execute(bind)).rowcount)
