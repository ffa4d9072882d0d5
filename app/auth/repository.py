from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.auth.keys import generate_key, hash_key
from app.models import ApiKey
from app.models.base import utcnow


async def find_active(conn: AsyncConnection, key_hash: str) -> tuple[uuid.UUID, str, tuple[str, ...] | None] | None:
    """(id, name, agents) of the active key with this hash, or None. Columns on a bare connection: the hot path."""
    columns = ApiKey.id, ApiKey.name, ApiKey.agents
    row = (await conn.execute(select(*columns).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)))).first()
    if row is None:
        return None
    return row.id, row.name, tuple(row.agents) if row.agents is not None else None


class AmbiguousPrefix(Exception):
    """Several active keys share the prefix given to revoke: which one is meant is not known."""

    def __init__(self, prefix: str, key_ids: list[uuid.UUID]) -> None:
        super().__init__(f"{len(key_ids)} active keys have the prefix {prefix}")
        self.prefix, self.key_ids = prefix, key_ids


async def is_active(conn: AsyncConnection, key_id: uuid.UUID) -> bool:
    """Whether the key still exists unrevoked (checked between model steps of its running turns)."""
    stmt = select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
    return (await conn.execute(stmt)).first() is not None


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(self, name: str, agents: Sequence[str] | None = None) -> tuple[ApiKey, str]:
        """A new key (`agents`: the agents it may use; None: all). The key itself is returned once."""
        key, prefix = generate_key()
        row = ApiKey(
            name=name, prefix=prefix, key_hash=hash_key(key), agents=list(agents) if agents is not None else None
        )
        self.session.add(row)
        await self.session.flush()
        return row, key

    async def list(self) -> Sequence[ApiKey]:
        return (await self.session.execute(select(ApiKey).order_by(ApiKey.created_at))).scalars().all()

    async def revoke(self, key_id_or_prefix: str) -> bool:
        """Revoke one active key: by id, or by prefix when exactly one active key has it.

        A prefix is only 8 hex characters and is not unique: when several active keys share it,
        none is revoked (AmbiguousPrefix names them, to be revoked by id).
        """
        try:
            key_id = uuid.UUID(key_id_or_prefix)
        except ValueError:
            matching = (
                (
                    await self.session.execute(
                        select(ApiKey.id)
                        .where(ApiKey.prefix == key_id_or_prefix, ApiKey.revoked_at.is_(None))
                        .order_by(ApiKey.created_at)
                    )
                )
                .scalars()
                .all()
            )
            if len(matching) > 1:
                raise AmbiguousPrefix(key_id_or_prefix, list(matching)) from None
            if not matching:
                return False
            key_id = matching[0]
        stmt = update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
        result = await self.session.execute(stmt)
        return bool(result.rowcount)  # type: ignore[attr-defined]
