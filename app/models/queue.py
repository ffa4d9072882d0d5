"""Messages waiting their turn (`multitask: "enqueue"`): stored at once, answered in arrival order."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, NullableJSON, UUIDPrimaryKey, utcnow


class QueuedMessage(UUIDPrimaryKey, Base):
    """A user message sent while another turn of its conversation ran. Not a `messages` row: the
    history stays in turn order (messages sort by their UUIDv7 id), so the queued turn's phase 1
    stores the user's message with a fresh id when its turn comes, and this row goes. Its id (a
    UUIDv7) is its place in the queue."""

    __tablename__ = "queued_messages"
    __table_args__ = (Index("ix_queued_messages_conversation_id", "conversation_id", "id"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    content: Mapped[str] = mapped_column(Text)
    # The user's turn as blocks when it is more than its text (its attachments' references first):
    # whichever replica answers it stores and sends what the client sent.
    blocks: Mapped[list[dict[str, Any]] | None] = mapped_column(NullableJSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
