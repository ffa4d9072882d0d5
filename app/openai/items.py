"""`item_reference` input items: an id this service issued stands for the item it was issued with.

Item ids are derived from what is stored (app/openai/response_objects.py): `msg_<answer id>_<n>`
(the n-th text of an answer), `mcp_<call id>` and `fc_<call id>` (our tool calls and the client's
function calls), and, in a response's input items, `msg_<user message id>` and `fco_<call id>`. A
reference is resolved by rendering the rows that may hold it with those same functions and taking
the item with that id, so a referenced item is the item the client was given. One owner-scoped
statement resolves every reference of a request; an id this owner was not given is a 404 naming it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from app.core.db import Transactions
from app.openai.errors import InvalidParam, ItemNotFound
from app.openai.repository import StoredRow, referenced_rows
from app.openai.response_objects import input_items, output_items

_MESSAGE = re.compile(r"^msg_([0-9a-f]{32})(?:_\d{1,6})?$")
_CALL = re.compile(r"^(?:fc|mcp|fco)_([a-zA-Z0-9_-]{1,256})$")


def rendered(row: StoredRow) -> list[dict[str, Any]]:
    """A stored row's items, as the client was given them (an answer's output, a turn's input)."""
    return output_items(row.content, row.id) if row.role == "assistant" else input_items(row.id, row.content)


async def resolve_references(
    transactions: Transactions, input_: str | list[dict[str, Any]], owner_id: uuid.UUID
) -> Any:
    """The input with each `item_reference` replaced by the item it names (one statement, if any)."""
    if isinstance(input_, str):
        return input_
    refs: dict[int, str] = {}
    message_ids: set[uuid.UUID] = set()
    call_ids: set[str] = set()
    for i, item in enumerate(input_):
        if item.get("type") != "item_reference":
            continue
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise InvalidParam(f"input[{i}].id", "An item_reference needs the id of an item.")
        if (found := _MESSAGE.match(item_id)) is not None:
            message_ids.add(uuid.UUID(hex=found[1]))
        elif (found := _CALL.match(item_id)) is not None:
            call_ids.add(found[1])
        else:
            raise ItemNotFound(item_id, f"input[{i}].id")
        refs[i] = item_id
    if not refs:
        return input_
    async with transactions.statement() as conn:
        rows = await referenced_rows(conn, message_ids=message_ids, call_ids=call_ids, owner_id=owner_id)
    items: dict[str, dict[str, Any]] = {}
    for row in rows:  # the newest first: it wins where two rows give the same id
        for item in rendered(row):
            items.setdefault(item["id"], item)
    resolved = list(input_)
    for i, item_id in refs.items():
        if item_id not in items:
            raise ItemNotFound(item_id, f"input[{i}].id")
        resolved[i] = items[item_id]
    return resolved
