"""SQL for conversations and messages. Every query names its owner."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.ids import uuid7
from app.models import Conversation, Message
from app.models.base import utcnow


class ConversationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_owned(self, conversation_id: uuid.UUID, *, owner_id: uuid.UUID) -> Conversation | None:
        stmt = select(Conversation).where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def create(self, *, owner_id: uuid.UUID, title: str, system: str | None) -> Conversation:
        now = utcnow()
        conversation = Conversation(
            id=uuid7(), owner_id=owner_id, title=title, system=system, created_at=now, updated_at=now
        )
        # A plain INSERT: this is the hot path of every new conversation; the unit of work adds nothing.
        await self.session.execute(
            insert(Conversation).values(
                id=conversation.id, owner_id=owner_id, title=title, system=system, created_at=now, updated_at=now
            )
        )
        return conversation

    async def touch(self, conversation_id: uuid.UUID, *, owner_id: uuid.UUID) -> None:
        await self.session.execute(
            update(Conversation)
            .where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
            .values(updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )

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

    async def history(self, conversation_id: uuid.UUID, *, owner_id: uuid.UUID) -> list[tuple[str, Any]]:
        """(role, content blocks) of every message, in order: what a new turn replays."""
        stmt = (
            select(Message.role, Message.content)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(Message.conversation_id == conversation_id, Conversation.owner_id == owner_id)
            .order_by(Message.id)
        )
        return [(role, content) for role, content in (await self.session.execute(stmt)).all()]

    async def start_turn(self, *, conversation_id: uuid.UUID, text: str, model: str) -> tuple[uuid.UUID, datetime]:
        """Store the user's message and the assistant's `in_progress` placeholder in one round trip.

        Returns the placeholder's id and creation time. Ids are UUIDv7, taken in order here, so the
        user's message sorts first.
        """
        now = utcnow()
        user_id, assistant_id = uuid7(), uuid7()
        common = {
            "conversation_id": conversation_id,
            "created_at": now,
            "updated_at": now,
            "stop_reason": None,
            "error": None,
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
            "cache_creation_tokens": 0,
        }
        rows = [
            {
                **common,
                "id": user_id,
                "role": "user",
                "content": [{"type": "text", "text": text}],
                "status": "complete",
                "model": None,
            },
            {**common, "id": assistant_id, "role": "assistant", "content": [], "status": "in_progress", "model": model},
        ]
        await self.session.execute(insert(Message), rows)
        return assistant_id, now

    async def finish(self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, **values: Any) -> None:
        """Record an assistant message's outcome; scoped to its conversation (owned by the caller)."""
        await self.session.execute(
            update(Message)
            .where(Message.id == message_id, Message.conversation_id == conversation_id)
            .values(updated_at=utcnow(), **values)
            .execution_options(synchronize_session=False)  # no objects in this session to refresh
        )
