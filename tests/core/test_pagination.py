"""The list routes' one cursor: what it encodes, what it refuses, and where a page ends.

The routes' own tests (tests/conversations, tests/memories) page through real rows; these pin the
cursor's format, so a cursor a client holds keeps working across a deploy.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from app.core.errors import InvalidRequest
from app.core.pagination import Keyset, PageParams
from app.models import Conversation, Memory

RECENT = Keyset(Conversation.updated_at, Conversation.id)
NEWEST = Keyset(Memory.id)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode()


def test_a_conversation_cursor_is_its_sort_key_as_before() -> None:
    at, cid = datetime(2026, 11, 22, 10, 30, 0, 123456, tzinfo=UTC), uuid.uuid4()
    cursor = RECENT.encode(SimpleNamespace(updated_at=at, id=cid))
    assert cursor == b64(f"{at.isoformat()}|{cid}".encode())  # the format the routes have always sent
    assert RECENT.decode(cursor) == (at, cid)
    # Another offset is the same instant, in UTC.
    plus_two = at.astimezone(timezone(timedelta(hours=2)))
    assert RECENT.decode(b64(f"{plus_two.isoformat()}|{cid}".encode())) == (at, cid)


def test_a_memory_cursor_from_before_still_reads() -> None:
    mid = uuid.uuid4()
    assert NEWEST.decode(NEWEST.encode(SimpleNamespace(id=mid))) == (mid,)
    assert NEWEST.decode(b64(mid.bytes)) == (mid,)  # what /memories sent before: the id's 16 bytes


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        b64(b"\xff\xfe"),  # not UTF-8
        b64(f"2026-01-01T00:00:00+00:00|{uuid.uuid4()}|extra".encode()),
        b64(f"2026-01-01T00:00:00|{uuid.uuid4()}".encode()),  # no offset: never one of ours
        b64(f"0001-01-01T00:00:00+14:00|{uuid.uuid4()}".encode()),  # no UTC instant for it
        b64(b"2026-01-01T00:00:00+00:00|not-a-uuid"),
        b64(uuid.uuid4().bytes),  # a memory's old cursor is not a conversation's
    ],
)
def test_a_forged_cursor_is_an_invalid_request(cursor: str) -> None:
    with pytest.raises(InvalidRequest):
        RECENT.decode(cursor)


def test_a_page_has_a_next_cursor_only_when_a_row_is_left() -> None:
    rows = [SimpleNamespace(id=uuid.uuid4()) for _ in range(3)]
    page = PageParams(limit=2)
    cut = NEWEST.cut(rows, page)  # the repository reads limit + 1
    assert list(cut.rows) == rows[:2]
    assert cut.next_cursor is not None
    assert NEWEST.decode(cut.next_cursor) == (rows[1].id,)
    assert NEWEST.cut(rows[:2], page).next_cursor is None  # exactly a page: the last one


def test_the_query_is_owned_ordered_after_the_cursor_and_one_row_longer() -> None:
    cursor = RECENT.encode(SimpleNamespace(updated_at=datetime(2026, 1, 1, tzinfo=UTC), id=uuid.uuid4()))
    owner = uuid.uuid4()
    stmt = RECENT.select(select(Conversation).where(Conversation.owner_id == owner), PageParams(5, cursor))
    sql = " ".join(str(stmt).split())
    assert "WHERE conversations.owner_id = :owner_id_1 AND (conversations.updated_at < " in sql
    assert "OR conversations.updated_at = :updated_at_2 AND conversations.id < :id_1" in sql
    assert sql.endswith("ORDER BY conversations.updated_at DESC, conversations.id DESC LIMIT :param_1")
    assert stmt.compile().params["param_1"] == 6
