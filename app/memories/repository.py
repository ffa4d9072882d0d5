"""SQL for memories. Every query names its owner."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.pagination import Keyset, PageParams, Slice
from app.models import Memory

_NEWEST = Keyset(Memory.id)


class MemoryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list_owned(self, *, owner_id: uuid.UUID, page: PageParams) -> Slice[Memory]:
        """Newest first: ids are UUIDv7, so id order is creation order (ix_memories_owner_recent)."""
        stmt = _NEWEST.select(select(Memory).where(Memory.owner_id == owner_id), page)
        return _NEWEST.cut((await self.session.execute(stmt)).scalars().all(), page)

    async def delete_owned(self, memory_id: uuid.UUID, *, owner_id: uuid.UUID) -> bool:
        result = await self.session.execute(delete(Memory).where(Memory.id == memory_id, Memory.owner_id == owner_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]
