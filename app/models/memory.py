from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UUIDPrimaryKey, utcnow


class Memory(UUIDPrimaryKey, Base):
    """A fact the agent chose to remember for one owner, across all of that owner's conversations."""

    __tablename__ = "memories"
    __table_args__ = (Index("ix_memories_owner_recent", "owner_id", "id"),)

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
