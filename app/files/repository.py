"""SQL for files' metadata. Every query names its owner."""

from __future__ import annotations

import uuid

from sqlalchemy import delete, false, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.pagination import Keyset, PageParams, Slice
from app.models import StoredFile

_NEWEST = Keyset(StoredFile.id)


class FileRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_owner(self, owner_id: uuid.UUID) -> None:
        """Hold the owner's file writes back until this transaction ends, so that the reads after it
        (the quota's sum, whether some file has these bytes) stay true until it commits: without
        it, concurrent uploads each see the quota free and together overrun it, and a delete can
        remove the bytes that an upload of the same content counted on. Postgres: an advisory lock
        on the owner; SQLite: its one writer's lock, taken now (a write that matches no row)."""
        if self.session.get_bind().dialect.name == "postgresql":
            key = func.hashtextextended(literal(f"agentchat.files:{owner_id}"), 0)
            await self.session.execute(select(func.pg_advisory_xact_lock(key)))
        else:
            await self.session.execute(delete(StoredFile).where(false()))

    async def add(self, row: StoredFile) -> StoredFile:
        self.session.add(row)
        await self.session.flush()
        return row

    async def stored_bytes(self, owner_id: uuid.UUID) -> int:
        """What the owner's files take in storage: each distinct content once."""
        distinct = (
            select(StoredFile.sha256, func.max(StoredFile.bytes).label("bytes"))
            .where(StoredFile.owner_id == owner_id)
            .group_by(StoredFile.sha256)
            .subquery()
        )
        return int((await self.session.execute(select(func.coalesce(func.sum(distinct.c.bytes), 0)))).scalar_one())

    async def has_content(self, owner_id: uuid.UUID, sha256: str) -> bool:
        stmt = select(StoredFile.id).where(StoredFile.owner_id == owner_id, StoredFile.sha256 == sha256).limit(1)
        return (await self.session.execute(stmt)).first() is not None

    async def with_content(self, owner_id: uuid.UUID, sha256: str) -> StoredFile | None:
        """The owner's oldest file with these bytes."""
        stmt = select(StoredFile).where(StoredFile.owner_id == owner_id, StoredFile.sha256 == sha256)
        return (await self.session.execute(stmt.order_by(StoredFile.id).limit(1))).scalar_one_or_none()

    async def get_owned(self, file_id: uuid.UUID, *, owner_id: uuid.UUID) -> StoredFile | None:
        stmt = select(StoredFile).where(StoredFile.id == file_id, StoredFile.owner_id == owner_id)
        return (await self.session.execute(stmt)).scalar_one_or_none()

    async def list_owned(self, *, owner_id: uuid.UUID, page: PageParams) -> Slice[StoredFile]:
        """Newest first: ids are UUIDv7, so id order is creation order (ix_files_owner_recent)."""
        stmt = _NEWEST.select(select(StoredFile).where(StoredFile.owner_id == owner_id), page)
        return _NEWEST.cut((await self.session.execute(stmt)).scalars().all(), page)

    async def delete_owned(self, file_id: uuid.UUID, *, owner_id: uuid.UUID) -> StoredFile | None:
        row = await self.get_owned(file_id, owner_id=owner_id)
        if row is None:
            return None
        await self.session.execute(delete(StoredFile).where(StoredFile.id == file_id, StoredFile.owner_id == owner_id))
        return row
