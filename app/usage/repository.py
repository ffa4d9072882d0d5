"""The SQL of GET /usage: a key's usage rows summed per group (and per model, for the prices)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import Date, cast, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.usage import ModelUsage

GroupBy = Literal["day", "agent", "model"]


@dataclass(frozen=True, slots=True)
class UsageSum:
    key: str  # the group's day (ISO), agent or model
    model: str
    turns: int
    model_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int


class UsageRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _day(self) -> Any:
        if self.session.get_bind().dialect.name == "postgresql":
            return cast(func.timezone("UTC", ModelUsage.created_at), Date)  # the UTC day, whatever the session's zone
        return func.date(ModelUsage.created_at)  # SQLite keeps UTC, without a zone

    async def sums(self, owner_id: uuid.UUID, *, start: datetime, end: datetime, group_by: GroupBy) -> list[UsageSum]:
        """The owner's usage from `start` up to `end`, summed per group and model (one indexed range)."""
        u = ModelUsage
        key = {"day": self._day(), "agent": u.agent, "model": u.model}[group_by]
        stmt = (
            select(
                key.label("key"),
                u.model,
                func.count(func.distinct(u.message_id)),
                func.sum(u.model_calls),
                func.sum(u.input_tokens),
                func.sum(u.output_tokens),
                func.sum(u.cache_read_tokens),
                func.sum(u.cache_creation_tokens),
            )
            .where(u.owner_id == owner_id, u.created_at >= start, u.created_at < end)
            .group_by(key, u.model)
            .order_by(key, u.model)
        )
        rows = (await self.session.execute(stmt)).all()
        return [
            UsageSum(
                key.isoformat() if isinstance(key, date) else str(key),
                model,
                *(int(n or 0) for n in numbers),
            )
            for key, model, *numbers in rows
        ]
