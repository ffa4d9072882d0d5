"""/v1/conversations: OpenAI's Conversations API over agentchat's conversations, one to one.

A conversation made here is listed by `GET /conversations` and continued by `POST /chat` (its
UUID is the hex after `conv_`), and one made there is open here; a response with `conversation`
is a turn of it. Items are its message rows as the Responses door shows them
(app/openai/conversation_items.py). Every query names the key that owns the conversation: another
key's id is a 404.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field, StringConstraints

from app.auth.deps import CurrentPrincipal
from app.conversations.errors import ConversationNotFound
from app.core.db import Transactions
from app.core.errors import Conflict, NotFound
from app.models.conversations import MessageStatus
from app.openai.conversation_items import (
    MAX_ITEMS,
    Located,
    conversation_id,
    conversation_object,
    items_of,
    parse_conversation_id,
    rows_of,
)
from app.openai.conversation_store import (
    StoredConversation,
    add_rows,
    create_conversation,
    delete_conversation,
    get_conversation,
    list_rows,
    set_metadata,
    set_row_content,
)
from app.openai.errors import InvalidParam, OpenAIRoute, declared
from app.openai.schemas import Loose
from app.state import TransactionsDep
from app.turns.begin import make_title

router = APIRouter(prefix="/conversations", tags=["openai"], route_class=OpenAIRoute)

# OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[
    dict[Annotated[str, StringConstraints(max_length=64)], Annotated[str, StringConstraints(max_length=512)]],
    Field(max_length=16),
]
Items = Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)]
UNTITLED = "New conversation"


class ConversationNotFoundHere(ConversationNotFound):
    """A 404 naming the request field that held the id (`conversation` on a response)."""

    def __init__(self, param: str | None = None) -> None:
        super().__init__()
        self.param = param


class ItemNotFound(NotFound):
    default_message = "Item not found."


class ItemInProgress(Conflict):
    type, default_message = "item_in_progress", "The item belongs to a turn still in progress."


class ConversationCreate(Loose):
    items: Items | None = None
    metadata: Metadata | None = None


class ConversationUpdate(Loose):
    metadata: Metadata | None


class ItemsCreate(Loose):
    items: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_ITEMS)]


class ConversationOut(Loose):
    id: str
    object: Literal["conversation"] = "conversation"
    created_at: int
    metadata: dict[str, str]


class ConversationDeleted(Loose):
    id: str
    object: Literal["conversation.deleted"] = "conversation.deleted"
    deleted: bool = True


class ConversationItemList(Loose):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


def conversation_param(value: str | dict[str, Any] | None, previous_response_id: str | None) -> uuid.UUID | None:
    """`conversation` on a response: its id, or `{"id": …}`; never with previous_response_id."""
    if value is None:
        return None
    if previous_response_id is not None:
        raise InvalidParam("conversation", "Use either previous_response_id or conversation, not both.")
    raw = value.get("id") if isinstance(value, dict) else value
    found = parse_conversation_id(raw) if isinstance(raw, str) else None
    if found is None:
        raise ConversationNotFoundHere("conversation")
    return found


def _id(value: str) -> uuid.UUID:
    found = parse_conversation_id(value)
    if found is None:
        raise ConversationNotFound()
    return found


def _out(found: StoredConversation) -> ConversationOut:
    return ConversationOut.model_validate(conversation_object(found.id, found.created_at, found.attributes))


def _page(items: list[dict[str, Any]], has_more: bool = False) -> ConversationItemList:
    first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
    return ConversationItemList(data=items, first_id=first, last_id=last, has_more=has_more)


async def _located(transactions: Transactions, id_: uuid.UUID, owner: uuid.UUID) -> list[Located]:
    async with transactions.statement() as conn:
        if await get_conversation(conn, id_, owner_id=owner) is None:
            raise ConversationNotFound()
        return items_of(await list_rows(conn, id_, owner_id=owner))


@router.post("", response_model=ConversationOut, responses=declared(400, 401, 429))
async def new_conversation(
    body: ConversationCreate, principal: CurrentPrincipal, transactions: TransactionsDep
) -> ConversationOut:
    """A conversation, with optional first items and metadata."""
    rows, systems = rows_of(body.items or [], opening=True)
    first = next((blocks[0]["text"] for role, blocks in rows if role == "user" and blocks[0]["type"] == "text"), "")
    async with transactions.atomic() as conn:
        found, _ = await create_conversation(
            conn,
            owner_id=principal.owner_id,
            title=make_title(first) if first.strip() else UNTITLED,
            system="\n\n".join(s for s in systems if s.strip()) or None,
            metadata=body.metadata,
            rows=rows,
        )
    return _out(found)


@router.get("/{conversation}", response_model=ConversationOut, responses=declared(401, 404, 429))
async def read_conversation(
    conversation: str, principal: CurrentPrincipal, transactions: TransactionsDep
) -> ConversationOut:
    """One conversation."""
    async with transactions.statement() as conn:
        found = await get_conversation(conn, _id(conversation), owner_id=principal.owner_id)
    if found is None:
        raise ConversationNotFound()
    return _out(found)


@router.post("/{conversation}", response_model=ConversationOut, responses=declared(400, 401, 404, 429))
async def update_conversation(
    conversation: str, body: ConversationUpdate, principal: CurrentPrincipal, transactions: TransactionsDep
) -> ConversationOut:
    """Replace a conversation's metadata."""
    async with transactions.atomic() as conn:
        found = await set_metadata(conn, _id(conversation), body.metadata, owner_id=principal.owner_id)
    if found is None:
        raise ConversationNotFound()
    return _out(found)


@router.delete("/{conversation}", response_model=ConversationDeleted, responses=declared(401, 404, 429))
async def remove_conversation(
    conversation: str, principal: CurrentPrincipal, transactions: TransactionsDep
) -> ConversationDeleted:
    """Delete a conversation and its items for good (as `DELETE /conversations/{id}`)."""
    id_ = _id(conversation)
    async with transactions.atomic() as conn:
        if not await delete_conversation(conn, id_, owner_id=principal.owner_id):
            raise ConversationNotFound()
    return ConversationDeleted(id=conversation_id(id_))


@router.get("/{conversation}/items", response_model=ConversationItemList, responses=declared(400, 401, 404, 429))
async def list_items(
    conversation: str,
    principal: CurrentPrincipal,
    transactions: TransactionsDep,
    after: Annotated[str | None, Query(max_length=300, description="List the items after this one.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
    include: Annotated[list[str] | None, Query(description="Accepted; nothing more is included.")] = None,
) -> ConversationItemList:
    """A conversation's items, newest first unless `order=asc`, `limit` at a time after `after`."""
    items = [located.item for located in await _located(transactions, _id(conversation), principal.owner_id)]
    if order == "desc":
        items.reverse()
    if after is not None:
        at = next((i for i, item in enumerate(items) if item["id"] == after), None)
        if at is None:
            raise InvalidParam("after", "No item with this id in the conversation.")
        items = items[at + 1 :]
    return _page(items[:limit], has_more=len(items) > limit)


@router.post("/{conversation}/items", response_model=ConversationItemList, responses=declared(400, 401, 404, 429))
async def add_items(
    conversation: str, body: ItemsCreate, principal: CurrentPrincipal, transactions: TransactionsDep
) -> ConversationItemList:
    """Append items to a conversation: the added items, as stored."""
    rows, _ = rows_of(body.items, opening=False)
    async with transactions.atomic() as conn:
        stored = await add_rows(conn, _id(conversation), rows, owner_id=principal.owner_id)
    if stored is None:
        raise ConversationNotFound()
    return _page([located.item for located in items_of(stored)])


@router.get("/{conversation}/items/{item_id}", responses=declared(401, 404, 429))
async def read_item(
    conversation: str, item_id: str, principal: CurrentPrincipal, transactions: TransactionsDep
) -> dict[str, Any]:
    """One item of a conversation."""
    for located in await _located(transactions, _id(conversation), principal.owner_id):
        if located.item["id"] == item_id:
            return located.item
    raise ItemNotFound()


@router.delete(
    "/{conversation}/items/{item_id}", response_model=ConversationOut, responses=declared(401, 404, 409, 429)
)
async def remove_item(
    conversation: str, item_id: str, principal: CurrentPrincipal, transactions: TransactionsDep
) -> ConversationOut:
    """Delete one item: the conversation, as it is now. (An answer's later texts move up one index.)"""
    id_, owner = _id(conversation), principal.owner_id
    async with transactions.atomic() as conn:
        found = await get_conversation(conn, id_, owner_id=owner)
        if found is None:
            raise ConversationNotFound()
        located = next(
            (x for x in items_of(await list_rows(conn, id_, owner_id=owner)) if x.item["id"] == item_id), None
        )
        if located is None:
            raise ItemNotFound()
        if located.row.status == MessageStatus.IN_PROGRESS:
            raise ItemInProgress()
        kept = [block for i, block in enumerate(located.row.content) if i not in located.blocks]
        await set_row_content(conn, replace(located.row, content=kept), id_)
    return _out(found)
