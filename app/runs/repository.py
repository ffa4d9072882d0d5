"""The one write runs make to the database: settling the answer of a run whose replica died."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Uuid, bindparam, text
from sqlalchemy.ext.asyncio import AsyncConnection

from app.models.base import JSONType, NullableJSON, UTCDateTime, utcnow

# Only an answer still `in_progress` (a replica that recorded it and died just after is left
# alone), and only in a conversation of the run's owner.
_SETTLE = text(
    """
    UPDATE messages SET status = 'incomplete', content = :content, error = :error, updated_at = :now
    WHERE id = :message_id AND status = 'in_progress' AND conversation_id IN (
        SELECT id FROM conversations WHERE id = :conversation_id AND owner_id = :owner_id
    )
    """
).bindparams(
    bindparam("content", type_=JSONType),
    bindparam("error", type_=NullableJSON),
    bindparam("now", type_=UTCDateTime()),
    bindparam("message_id", type_=Uuid()),
    bindparam("conversation_id", type_=Uuid()),
    bindparam("owner_id", type_=Uuid()),
)


async def settle_interrupted(
    conn: AsyncConnection,
    *,
    message_id: uuid.UUID,
    conversation_id: uuid.UUID,
    owner_id: uuid.UUID,
    content: list[dict[str, Any]],
    error: dict[str, Any],
) -> bool:
    """True when the answer was still in progress and is now recorded `incomplete`."""
    params = {"message_id": message_id, "conversation_id": conversation_id, "owner_id": owner_id}
    result = await conn.execute(_SETTLE, {**params, "content": content, "error": error, "now": utcnow()})
    return bool(result.rowcount)
