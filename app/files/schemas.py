from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.core.pagination import Page


class FileOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    filename: str
    media_type: str = Field(description="Decided from the file's bytes, not its name.")
    bytes: int
    sha256: str
    width: int | None = Field(default=None, description="Images: pixels, from the header.")
    height: int | None = None
    pages: int | None = Field(default=None, description="PDFs: the page count.")
    created_at: datetime


class FilePage(Page[FileOut]):
    pass


class AttachmentOut(BaseModel):
    """A file a user message attached (its metadata when attached; `GET /files/{id}` for the file now)."""

    id: uuid.UUID
    filename: str
    media_type: str
    bytes: int
    width: int | None = None
    height: int | None = None
    pages: int | None = None


def attachments_of(blocks: list[dict[str, Any]]) -> list[AttachmentOut]:
    """The attachment blocks of a stored message (app/files/attach.py), as the history API lists them."""
    return [
        AttachmentOut(
            id=b["file_id"],
            filename=b.get("filename", ""),
            media_type=b.get("media_type", ""),
            bytes=b.get("bytes", 0),
            width=b.get("width"),
            height=b.get("height"),
            pages=b.get("pages"),
        )
        for b in blocks
        if isinstance(b, dict) and b.get("type") == "attachment"
    ]
