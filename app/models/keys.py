from __future__ import annotations

from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, UUIDPrimaryKey, utcnow


class ApiKey(UUIDPrimaryKey, Base):
    """An API key is an owner: everything it creates belongs to it alone."""

    __tablename__ = "api_keys"

    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    # The agents this key may use; NULL: all of them.
    agents: Mapped[list[str] | None] = mapped_column(JSONType)
