"""GET /memories and DELETE /memories/{id}: the owner sees and removes what the agent remembers."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status
from starlette.responses import Response

from app.auth.deps import CurrentPrincipal
from app.auth.errors import KEY_RESPONSES
from app.core.errors import InvalidRequest, responses
from app.core.pagination import PageParamsDep
from app.memories.errors import MemoryNotFound
from app.memories.repository import MemoryRepository
from app.memories.schemas import MemoryOut, MemoryPage
from app.state import SessionDep

# Every route takes a key: the key's errors are declared once, here.
router = APIRouter(prefix="/memories", tags=["memories"], responses=KEY_RESPONSES)


@router.get("", responses=responses(InvalidRequest))
async def list_memories(session: SessionDep, principal: CurrentPrincipal, page: PageParamsDep) -> MemoryPage:
    """What the agent remembers for you, newest first, with where each memory came from."""
    found = await MemoryRepository(session).list_owned(owner_id=principal.owner_id, page=page)
    return MemoryPage(items=[MemoryOut.of(row) for row in found.rows], next_cursor=found.next_cursor)


@router.delete(
    "/{memory_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(MemoryNotFound),
)
async def delete_memory(memory_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """Forget one memory for good: recall never returns it again."""
    if not await MemoryRepository(session).delete_owned(memory_id, owner_id=principal.owner_id):
        raise MemoryNotFound()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
