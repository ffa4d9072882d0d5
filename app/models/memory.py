from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Text, false
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UUIDPrimaryKey, utcnow


class Memory(UUIDPrimaryKey, Base):
    """A fact the agent chose to remember for one owner, across all of that owner's conversations.

    With its provenance: the conversation and assistant message (turn) that wrote it, and whether
    that turn had read untrusted tool output (a web page...) before the `remember` call, which is
    how an instruction planted in fetched text would get in. The conversation and message ids are
    a record, not foreign keys: a memory outlives the conversation that wrote it (the owner
    deletes memories on their own, DELETE /memories/{id}).
    """

    __tablename__ = "memories"
    __table_args__ = (Index("ix_memories_owner_recent", "owner_id", "id"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    conversation_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    message_id: Mapped[uuid.UUID | None] = mapped_column(default=None)
    untrusted_context: Mapped[bool] = mapped_column(default=False, server_default=false())
