"""GET /usage: what the calling key's turns used (tokens, model calls) and cost, per day, agent or model."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.auth.deps import CurrentPrincipal
from app.auth.errors import KEY_RESPONSES
from app.core.errors import InvalidRequest, responses
from app.core.prices import PriceTable, Tokens
from app.state import SessionDep, SettingsDep
from app.usage.repository import GroupBy, UsageRepository, UsageSum

router = APIRouter(tags=["usage"], responses=KEY_RESPONSES)

DEFAULT_DAYS = 30
MAX_DAYS = 366


class UsageItem(BaseModel):
    day: str | None = Field(default=None, description="The UTC day (group_by=day).")
    agent: str | None = Field(default=None, description="The agent (group_by=agent).")
    model: str | None = Field(default=None, description="The model (group_by=model).")
    turns: int
    model_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cost_usd: float | None = Field(description="From MODEL_PRICES; null when a model of the group has no price.")


class UsageOut(BaseModel):
    items: list[UsageItem]


def _item(group_by: GroupBy, key: str, sums: list[UsageSum], prices: PriceTable) -> UsageItem:
    cost: float | None = 0.0
    for s in sums:
        spent = prices.cost(
            s.model, Tokens(s.input_tokens, s.output_tokens, s.cache_read_tokens, s.cache_creation_tokens)
        )
        cost = None if spent is None or cost is None else cost + spent
    return UsageItem(
        **{group_by: key},
        turns=sum(s.turns for s in sums),
        model_calls=sum(s.model_calls for s in sums),
        input_tokens=sum(s.input_tokens for s in sums),
        output_tokens=sum(s.output_tokens for s in sums),
        cache_read_input_tokens=sum(s.cache_read_tokens for s in sums),
        cache_creation_input_tokens=sum(s.cache_creation_tokens for s in sums),
        cost_usd=round(cost, 10) if cost is not None else None,  # float noise off, not micro-cents
    )


# Unset: only the group's own key ("day", "agent" or "model") is in each item; cost_usd is always there.
@router.get("/usage", responses=responses(InvalidRequest), response_model_exclude_unset=True)
async def get_usage(
    principal: CurrentPrincipal,
    session: SessionDep,
    settings: SettingsDep,
    start: Annotated[date | None, Query(alias="from", description="First UTC day (default: to - 29 days).")] = None,
    end: Annotated[date | None, Query(alias="to", description="Last UTC day, included (default: today).")] = None,
    group_by: Annotated[GroupBy, Query()] = "day",
) -> UsageOut:
    """This key's usage and cost, per UTC day, agent or model, over a range of days."""
    end = end or datetime.now(UTC).date()
    start = start or end - timedelta(days=DEFAULT_DAYS - 1)
    if start > end:
        raise InvalidRequest("`from` is after `to`.")
    if (end - start).days >= MAX_DAYS:
        raise InvalidRequest(f"At most {MAX_DAYS} days at a time.")
    since = datetime.combine(start, time.min, UTC)
    until = datetime.combine(end + timedelta(days=1), time.min, UTC)
    rows = await UsageRepository(session).sums(principal.owner_id, start=since, end=until, group_by=group_by)
    groups: dict[str, list[UsageSum]] = {}
    for row in rows:
        groups.setdefault(row.key, []).append(row)
    return UsageOut(items=[_item(group_by, key, sums, settings.model_prices) for key, sums in groups.items()])
