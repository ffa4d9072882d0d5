from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from app.core.pagination import Page
from app.models import Memory


class MemoryOut(BaseModel):
    id: uuid.UUID
    text: str
    created_at: datetime
    conversation_id: uuid.UUID | None = Field(description="The conversation whose turn wrote it (it may be gone).")
    untrusted_context: bool = Field(
        description="Written in a turn that had read untrusted tool output (a fetched web page...) before: "
        "review it, it may carry an instruction planted in that content."
    )

    @classmethod
    def of(cls, memory: Memory) -> MemoryOut:
        return cls(
            id=memory.id,
            text=memory.content,
            created_at=memory.created_at,
            conversation_id=memory.conversation_id,
            untrusted_context=memory.untrusted_context,
        )


class MemoryPage(Page[MemoryOut]):
    pass
