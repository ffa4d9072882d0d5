from __future__ import annotations

import uuid

from fastapi import APIRouter, status
from starlette.responses import Response

from app.auth.deps import CurrentPrincipal
from app.auth.errors import KEY_RESPONSES
from app.conversations.errors import ConversationNotFound
from app.conversations.render import render_message
from app.conversations.repository import ConversationRepository, MessageRepository
from app.conversations.schemas import ConversationOut, ConversationPage, MessagePage
from app.core.errors import InvalidRequest, responses
from app.core.pagination import PageParamsDep
from app.state import SessionDep

# Every route takes a key: the key's errors are declared once, here.
router = APIRouter(prefix="/conversations", tags=["conversations"], responses=KEY_RESPONSES)


@router.get("", responses=responses(InvalidRequest))
async def list_conversations(session: SessionDep, principal: CurrentPrincipal, page: PageParamsDep) -> ConversationPage:
    """Your conversations, most recently active first."""
    found = await ConversationRepository(session).list_owned(owner_id=principal.owner_id, page=page)
    items = [ConversationOut.model_validate(row) for row in found.rows]
    return ConversationPage(items=items, next_cursor=found.next_cursor)


@router.get("/{conversation_id}", responses=responses(ConversationNotFound))
async def get_conversation(
    conversation_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal
) -> ConversationOut:
    """One conversation."""
    row = await ConversationRepository(session).get_owned(conversation_id, owner_id=principal.owner_id)
    if row is None:
        raise ConversationNotFound()
    return ConversationOut.model_validate(row)


@router.get("/{conversation_id}/messages", responses=responses(ConversationNotFound))
async def list_messages(conversation_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> MessagePage:
    """A conversation's history: one user and one assistant item per turn, in order."""
    if await ConversationRepository(session).get_owned(conversation_id, owner_id=principal.owner_id) is None:
        raise ConversationNotFound()
    rows = await MessageRepository(session).list_for_owned(conversation_id, owner_id=principal.owner_id)
    return MessagePage(items=[render_message(r) for r in rows])


@router.delete(
    "/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(ConversationNotFound),
)
async def delete_conversation(conversation_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """Delete a conversation and its messages for good."""
    if not await ConversationRepository(session).delete_owned(conversation_id, owner_id=principal.owner_id):
        raise ConversationNotFound()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
