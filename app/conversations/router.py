from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status
from starlette.responses import Response

from app.auth.deps import CurrentPrincipal
from app.auth.errors import KEY_RESPONSES
from app.conversations.branches import branch, latest_leaf, leaf_below, parents, siblings
from app.conversations.errors import ConversationNotFound, MessageNotFound
from app.conversations.render import render_message
from app.conversations.repository import ConversationRepository, MessageRepository
from app.conversations.schemas import ConversationOut, ConversationPage, MessagePage
from app.core.config import Settings
from app.core.errors import InvalidRequest, responses
from app.core.pagination import PageParamsDep
from app.llm.summary import SUMMARY_ROLE
from app.models import Conversation
from app.state import SessionDep, SettingsDep

EndUser = Annotated[
    str | None,
    Query(max_length=200, description="Only those of this end user (a client's `user`, Open WebUI's user id)."),
]

# Every route takes a key: the key's errors are declared once, here.
router = APIRouter(prefix="/conversations", tags=["conversations"], responses=KEY_RESPONSES)


def conversation_out(row: Conversation, settings: Settings) -> ConversationOut:
    out = ConversationOut.model_validate(row)
    # Bound to no agent: a conversation from before agents, served by the default one.
    return out if out.agent is not None else out.model_copy(update={"agent": settings.agent_set.default_name})


@router.get("", responses=responses(InvalidRequest))
async def list_conversations(
    session: SessionDep,
    principal: CurrentPrincipal,
    page: PageParamsDep,
    settings: SettingsDep,
    end_user: EndUser = None,
) -> ConversationPage:
    """Your conversations, most recently active first."""
    found = await ConversationRepository(session).list_owned(owner_id=principal.owner_id, page=page, end_user=end_user)
    items = [conversation_out(row, settings) for row in found.rows]
    return ConversationPage(items=items, next_cursor=found.next_cursor)


@router.get("/{conversation_id}", responses=responses(ConversationNotFound))
async def get_conversation(
    conversation_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal, settings: SettingsDep
) -> ConversationOut:
    """One conversation."""
    row = await ConversationRepository(session).get_owned(conversation_id, owner_id=principal.owner_id)
    if row is None:
        raise ConversationNotFound()
    return conversation_out(row, settings)


Leaf = Annotated[
    uuid.UUID | None,
    Query(
        description="Show the branch through this message, down to its latest message (default: the branch "
        "of the conversation's latest message)."
    ),
]


@router.get("/{conversation_id}/messages", responses=responses(ConversationNotFound, MessageNotFound))
async def list_messages(
    conversation_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal, leaf: Leaf = None
) -> MessagePage:
    """One branch of a conversation's history: one user and one assistant item per turn, in order; a
    `summary` item where the branch was compacted (the model reads it instead of the messages it
    covers). Each item names its parent and its siblings (edits, regenerated answers)."""
    if await ConversationRepository(session).get_owned(conversation_id, owner_id=principal.owner_id) is None:
        raise ConversationNotFound()
    rows = await MessageRepository(session).list_for_owned(conversation_id, owner_id=principal.owner_id)
    if leaf is None:
        shown = latest_leaf(rows)
    elif any(row.id == leaf and row.role != SUMMARY_ROLE for row in rows):
        shown = leaf_below(rows, leaf)
    else:
        raise MessageNotFound()
    groups, parent = siblings(rows), parents(rows)
    items = []
    for row in branch(rows, shown):
        item = render_message(row)
        item.parent_id = parent[row.id]  # as branches read it: a row from before them has none stored
        if row.role != SUMMARY_ROLE:
            group = groups[parent[row.id]]
            item.siblings, item.sibling_ids = len(group) - 1, group
        items.append(item)
    return MessagePage(items=items, leaf_id=shown)


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
