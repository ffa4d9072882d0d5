from __future__ import annotations

import base64
import binascii
import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from starlette.responses import Response

from app.auth.deps import CurrentPrincipal
from app.conversations.errors import ConversationNotFound
from app.conversations.render import render_message
from app.conversations.repository import ConversationRepository, MessageRepository
from app.conversations.schemas import ConversationOut, ConversationPage, MessagePage
from app.core.errors import InvalidRequest, Unauthorized, responses
from app.state import SessionDep

router = APIRouter(prefix="/conversations", tags=["conversations"])


def encode_cursor(at: datetime, conversation_id: uuid.UUID) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{conversation_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        at, _, raw_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        when = datetime.fromisoformat(at)
        if when.tzinfo is None:  # not one of ours: ours carry their offset (timestamptz)
            raise ValueError("naive datetime")
        return when.astimezone(UTC), uuid.UUID(raw_id)
    except (ValueError, OverflowError, binascii.Error, UnicodeError) as exc:
        raise InvalidRequest("Invalid cursor.") from exc


@router.get("", responses=responses(Unauthorized, InvalidRequest))
async def list_conversations(
    session: SessionDep,
    principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = None,
) -> ConversationPage:
    """Your conversations, most recently active first."""
    before = decode_cursor(cursor) if cursor else None
    rows = await ConversationRepository(session).list_owned(owner_id=principal.owner_id, limit=limit + 1, before=before)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].updated_at, page[-1].id) if len(rows) > limit else None
    return ConversationPage(items=[ConversationOut.model_validate(r) for r in page], next_cursor=next_cursor)


@router.get("/{conversation_id}", responses=responses(Unauthorized, ConversationNotFound))
async def get_conversation(
    conversation_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal
) -> ConversationOut:
    """One conversation."""
    row = await ConversationRepository(session).get_owned(conversation_id, owner_id=principal.owner_id)
    if row is None:
        raise ConversationNotFound()
    return ConversationOut.model_validate(row)


@router.get("/{conversation_id}/messages", responses=responses(Unauthorized, ConversationNotFound))
async def list_messages(conversation_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> MessagePage:
    """A conversation's history: one user and one assistant item per turn, in order."""
    if await ConversationRepository(session).get_owned(conversation_id, owner_id=principal.owner_id) is None:
        raise ConversationNotFound()
    rows = await MessageRepository(session).list_for_owned(conversation_id, owner_id=principal.owner_id)
    return MessagePage(items=[render_message(r) for r in rows])


@router.delete(
    "/{conversation_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=responses(Unauthorized, ConversationNotFound),
)
async def delete_conversation(conversation_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> Response:
    """Delete a conversation and its messages for good."""
    if not await ConversationRepository(session).delete_owned(conversation_id, owner_id=principal.owner_id):
        raise ConversationNotFound()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
