"""GET /memories and DELETE /memories/{id}: the owner sees and removes what the agent remembers."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from starlette.responses import Response

from app.auth.deps import CurrentPrincipal
from app.core.errors import InvalidRequest, Unauthorized, responses
from app.memories.errors import MemoryNotFound
from app.memories.repository import MemoryRepository
from app.memories.schemas import MemoryOut, MemoryPage
from app.state import SessionDep

router = APIRouter(prefix="/memories", tags=["memories"])


def encode_cursor(memory_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(memory_id.bytes).decode()


def decode_cursor(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(bytes=base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error) as exc:
        raise InvalidRequest("Invalid cursor.") from exc


@router.get("", responses=responses(Unauthorized, InvalidRequest))
async def list_memories(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> MemoryPage:
    """What the agent remembers for you, newest first, with where each memory came from."""
    before = decode_cursor(cursor) if cursor else None
    rows = await MemoryRepository(session).list_owned(owner_id=principal.owner_id, limit=limit + 1, before=before)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].id) if len(rows) > limit else None
    return MemoryPage(items=[MemoryOut.of(row) for row in page], next_cursor=next_cursor)


@router.delete(
    "/{memory_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(Unauthorized, MemoryNotFound),
)
async def delete_memory(memory_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """Forget one memory for good: recall never returns it again."""
    if not await MemoryRepository(session).delete_owned(memory_id, owner_id=principal.owner_id):
        raise MemoryNotFound()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
