"""SQL for conversations and messages. Every query names its owner."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.conversations.branches import ROOT
from app.conversations.branches import parents as branch_parents
from app.core.pagination import Keyset, PageParams, Slice
from app.llm.summary import SUMMARY_ROLE
from app.models import Conversation, Message

_RECENT = Keyset(Conversation.updated_at, Conversation.id)


class ConversationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_owned(self, conversation_id: uuid.UUID, *, owner_id: uuid.UUID) -> Conversation | None:
        stmt = select(Conversation).where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list_owned(
        self, *, owner_id: uuid.UUID, page: PageParams, end_user: str | None = None
    ) -> Slice[Conversation]:
        """Most recently active first (ix_conversations_owner_recent; one end user's: ..._owner_end_user)."""
        owned = select(Conversation).where(Conversation.owner_id == owner_id)
        if end_user is not None:
            owned = owned.where(Conversation.end_user == end_user)
        stmt = _RECENT.select(owned, page)
        return _RECENT.cut((await self.session.execute(stmt)).scalars().all(), page)

    async def delete_owned(self, conversation_id: uuid.UUID, *, owner_id: uuid.UUID) -> bool:
        owned = select(Conversation.id).where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
        # Messages first: SQLite only cascades with foreign_keys=ON, and we do not rely on it.
        await self.session.execute(delete(Message).where(Message.conversation_id.in_(owned)))
        result = await self.session.execute(
            delete(Conversation).where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


class MessageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list_for_owned(self, conversation_id: uuid.UUID, *, owner_id: uuid.UUID) -> Sequence[Message]:
        stmt = (
            select(Message)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.conversation_id == conversation_id, Conversation.owner_id == owner_id)
            .order_by(Message.id)
        )
        return (await self.session.execute(stmt)).scalars().all()


async def delete_messages(conn: AsyncConnection, conversation_id: uuid.UUID, ids: Sequence[uuid.UUID]) -> None:
    """Some messages of a conversation deleted (an item or a response taken out): what followed them
    goes below their nearest remaining ancestor, so no branch loses the messages before them."""
    gone = set(ids)
    in_conversation = Message.conversation_id == conversation_id
    found = (await conn.execute(select(Message.id, Message.parent_id, Message.role).where(in_conversation))).all()
    parents = branch_parents(found)  # a row from before branches follows the one before it
    for child, parent in parents.items():
        if child in gone or parent not in gone:
            continue
        while parent in gone:
            parent = parents.get(parent)
        above = parent if parent is not None else ROOT  # none left: a first message (NULL would mean "the one before")
        await conn.execute(update(Message).where(Message.id == child, in_conversation).values(parent_id=above))
    await conn.execute(delete(Message).where(Message.id.in_(list(gone)), in_conversation))


async def latest_message(conn: AsyncConnection, conversation_id: uuid.UUID) -> uuid.UUID | None:
    """The conversation's latest message, compaction rows aside: the leaf of its current branch."""
    query = (
        select(Message.id)
        .where(Message.conversation_id == conversation_id, Message.role != SUMMARY_ROLE)
        .order_by(Message.id.desc())
        .limit(1)
    )
    return (await conn.execute(query)).scalar_one_or_none()
