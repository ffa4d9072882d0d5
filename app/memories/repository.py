"""SQL for memories. Every query names its owner."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Memory


class MemoryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list_owned(self, *, owner_id: uuid.UUID, limit: int, before: uuid.UUID | None) -> Sequence[Memory]:
        """Newest first: ids are UUIDv7, so id order is creation order (ix_memories_owner_recent)."""
        stmt = select(Memory).where(Memory.owner_id == owner_id)
        if before is not None:
            stmt = stmt.where(Memory.id < before)
        stmt = stmt.order_by(Memory.id.desc()).limit(limit)
        return (await self.session.execute(stmt)).scalars().all()

    async def delete_owned(self, memory_id: uuid.UUID, *, owner_id: uuid.UUID) -> bool:
        result = await self.session.execute(delete(Memory).where(Memory.id == memory_id, Memory.owner_id == owner_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]
