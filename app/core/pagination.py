"""Cursor pagination for every list route: `?limit=&cursor=` in, `{"items", "next_cursor"}` out.

Lists are newest first and paged by keyset (the last row's sort key), so pages stay stable while
rows are written. The cursor is that key, `|`-joined and base64url-encoded: opaque to clients,
checked on the way in (a forged one is a 422, never a 500).
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, TypeDecorator, and_, or_
from sqlalchemy.orm import InstrumentedAttribute

from app.core.errors import InvalidRequest

T = TypeVar("T")
Row = TypeVar("Row")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class Page(BaseModel, Generic[T]):
    """One page of a list; `next_cursor` is null on the last one. Subclass it to name the schema
    (`class ConversationPage(Page[ConversationOut])`), as client generators see that name."""

    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class PageParams:
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None


def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: str | None = None,
) -> PageParams:
    return PageParams(limit, cursor)


PageParamsDep = Annotated[PageParams, Depends(page_params)]


@dataclass(frozen=True, slots=True)
class Slice(Generic[Row]):
    """A page of rows as the repository read them, and the cursor of the page after it."""

    rows: Sequence[Row]
    next_cursor: str | None


def _parse_datetime(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:  # not one of ours: ours carry their offset (timestamptz)
        raise ValueError("naive datetime")
    return when.astimezone(UTC)  # OverflowError for an instant the database cannot take


_PARSERS: dict[type, Callable[[str], Any]] = {datetime: _parse_datetime, uuid.UUID: uuid.UUID}


def _python_type(column: InstrumentedAttribute[Any]) -> type:
    sql_type = column.type
    if isinstance(sql_type, TypeDecorator):  # UTCDateTime: a DateTime underneath
        sql_type = sql_type.impl_instance
    python_type: type = sql_type.python_type
    return python_type


class Keyset:
    """Newest first over `columns`, which together are unique (the last one is the id).

    `select` adds the cursor's condition, the order and the limit to a statement that already
    names its owner; `cut` turns what it read into a `Slice`.
    """

    def __init__(self, *columns: InstrumentedAttribute[Any]) -> None:
        types = [_python_type(column) for column in columns]
        for column, type_ in zip(columns, types, strict=True):
            if type_ not in _PARSERS:
                raise TypeError(f"no cursor encoding for {column.key}: {type_.__name__}")
        self.columns = columns
        self._parsers = [_PARSERS[type_] for type_ in types]
        self._just_an_id = types == [uuid.UUID]

    def select(self, stmt: Select[Row], page: PageParams) -> Select[Row]:
        """`stmt` after the cursor, in order, with one row more than the page (is there a next?)."""
        if page.cursor is not None:
            stmt = stmt.where(self._after(self.decode(page.cursor)))
        return stmt.order_by(*(column.desc() for column in self.columns)).limit(page.limit + 1)

    def cut(self, rows: Sequence[Row], page: PageParams) -> Slice[Row]:
        if len(rows) <= page.limit:
            return Slice(rows, None)
        rows = rows[: page.limit]
        return Slice(rows, self.encode(rows[-1]))

    def encode(self, row: object) -> str:
        values = (getattr(row, column.key) for column in self.columns)
        text = "|".join(value.isoformat() if isinstance(value, datetime) else str(value) for value in values)
        return base64.urlsafe_b64encode(text.encode()).decode()

    def decode(self, cursor: str) -> tuple[Any, ...]:
        try:
            raw = base64.urlsafe_b64decode(cursor.encode())
            if self._just_an_id and len(raw) == 16:
                return (uuid.UUID(bytes=raw),)  # /memories' cursors before this module: the id's bytes
            parts = raw.decode().split("|")
            if len(parts) != len(self._parsers):
                raise ValueError("wrong number of parts")
            return tuple(parse(part) for parse, part in zip(self._parsers, parts, strict=True))
        except (ValueError, OverflowError, binascii.Error, UnicodeError) as exc:
            raise InvalidRequest("Invalid cursor.") from exc

    def _after(self, values: tuple[Any, ...]) -> ColumnElement[bool]:
        # (a, b) < (x, y), spelled out: the same SQL on Postgres and SQLite, and the index serves it.
        return or_(
            *(
                and_(*(c == v for c, v in zip(self.columns[:n], values[:n], strict=True)), column < value)
                for n, (column, value) in enumerate(zip(self.columns, values, strict=True))
            )
        )
