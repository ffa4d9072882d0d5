from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UUIDPrimaryKey, utcnow


class ModelUsage(UUIDPrimaryKey, Base):
    """The model calls of one turn (or of its continuation after an approval): their tokens, per key,
    agent and model. Written by phase 3's statement with the answer (app/turns/store.py); read by
    GET /usage. No foreign keys: what a key spent stays when its conversations are deleted."""

    __tablename__ = "model_usage"
    __table_args__ = (Index("ix_model_usage_owner_time", "owner_id", "created_at"),)

    owner_id: Mapped[uuid.UUID]
    message_id: Mapped[uuid.UUID]
    agent: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(100))
    model_calls: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_creation_tokens: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
