from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.auth.keys import generate_key, hash_key
from app.models import ApiKey
from app.models.base import utcnow


async def find_active(conn: AsyncConnection, key_hash: str) -> tuple[uuid.UUID, str] | None:
    """(id, name) of the active key with this hash, or None. Columns on a bare connection: the hot path."""
    stmt = select(ApiKey.id, ApiKey.name).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    row = (await conn.execute(stmt)).first()
    return (row.id, row.name) if row is not None else None


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, name: str) -> tuple[ApiKey, str]:
        key, prefix = generate_key()
        row = ApiKey(name=name, prefix=prefix, key_hash=hash_key(key))
        self.session.add(row)
        await self.session.flush()
        return row, key

    async def list(self) -> Sequence[ApiKey]:
        return (await self.session.execute(select(ApiKey).order_by(ApiKey.created_at))).scalars().all()

    async def revoke(self, key_id_or_prefix: str) -> bool:
        stmt = update(ApiKey).where(ApiKey.revoked_at.is_(None))
        try:
            stmt = stmt.where(ApiKey.id == uuid.UUID(key_id_or_prefix))
        except ValueError:
            stmt = stmt.where(ApiKey.prefix == key_id_or_prefix)
        result = await self.session.execute(stmt.values(revoked_at=utcnow()))
        return bool(result.rowcount)  # type: ignore[attr-defined]
