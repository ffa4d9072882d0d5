"""Files a key uploaded (images, PDFs, text), and their bytes when the database stores them."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, UUIDPrimaryKey, utcnow


class StoredFile(UUIDPrimaryKey, Base):
    """One upload: its name, the type its bytes showed, its size and hash, and what a model needs
    to know before reading it (an image's dimensions, a PDF's page count). The bytes themselves are
    in the storage (app/files/storage.py), once per owner and SHA-256, shared by equal uploads."""

    __tablename__ = "files"
    __table_args__ = (
        Index("ix_files_owner_recent", "owner_id", "id"),
        Index("ix_files_owner_sha256", "owner_id", "sha256"),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(100))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(default=None)
    height: Mapped[int | None] = mapped_column(default=None)
    pages: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FileChunk(Base):
    """The bytes of an owner's files with one SHA-256, when the database is the storage (the default):
    1 MiB rows in order (`seq` from 0), so a file is written and read a chunk at a time, never whole."""

    __tablename__ = "file_chunks"

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)
