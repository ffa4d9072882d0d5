"""What runs write to the database: the answers of turns whose replica died."""

from __future__ import annotations

import uuid
from datetime import timedelta
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


# Every turn ends (TURN_TIMEOUT) and is recorded (within RECORD_DEADLINE) long before this age; an
# answer still `in_progress` past it belongs to a process that died — with or without Redis, a
# streamed turn or a JSON one. Reads the partial index ix_messages_in_progress: a few rows at most.
# Aged from updated_at: a paused answer continued days later (app/turns/approvals.py) is in progress
# again from its claim, not from its creation.
_SWEEP = text(
    """
    UPDATE messages SET status = 'incomplete', error = :error, updated_at = :now
    WHERE status = 'in_progress' AND role = 'assistant' AND updated_at < :before
    """
).bindparams(
    bindparam("error", type_=NullableJSON),
    bindparam("now", type_=UTCDateTime()),
    bindparam("before", type_=UTCDateTime()),
)


async def sweep_abandoned(conn: AsyncConnection, *, older_than: float, error: dict[str, Any]) -> int:
    """Record as `incomplete` every answer left `in_progress` longer than any turn can run."""
    now = utcnow()
    result = await conn.execute(_SWEEP, {"error": error, "now": now, "before": now - timedelta(seconds=older_than)})
    return int(result.rowcount)
