"""SQL for conversations and messages. Every query names its owner."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Conversation, Message


class ConversationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_owned(self, conversation_id: uuid.UUID, *, owner_id: uuid.UUID) -> Conversation | None:
        stmt = select(Conversation).where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list_owned(
        self, *, owner_id: uuid.UUID, limit: int, before: tuple[datetime, uuid.UUID] | None
    ) -> Sequence[Conversation]:
        """Newest first; keyset pagination on (updated_at, id) so pages stay stable under writes."""
        stmt = select(Conversation).where(Conversation.owner_id == owner_id)
        if before is not None:
            at, last_id = before
            stmt = stmt.where(
                or_(Conversation.updated_at < at, and_(Conversation.updated_at == at, Conversation.id < last_id))
            )
        stmt = stmt.order_by(Conversation.updated_at.desc(), Conversation.id.desc()).limit(limit)
        return (await self.session.execute(stmt)).scalars().all()

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
