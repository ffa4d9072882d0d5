"""GET /usage: each turn's model calls are recorded with its answer (per key, agent and model), and
the sums per day, agent and model equal the turns made, for the calling key only, priced by
MODEL_PRICES (null without a price)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.core.agents_config import parse_agents
from app.core.config import Settings
from app.core.prices import parse_prices
from app.models import Message
from app.models.usage import ModelUsage
from app.state import Resources
from tests.fixtures.app import embedded, make_key, running_app

TOOL = '[[tool:calculator {"expression": "2+2"}]]'
TOKENS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


@pytest.fixture
async def two_agents(settings: Settings) -> AsyncIterator[tuple[Resources, httpx.AsyncClient]]:
    url = settings.anthropic_base_url
    agents = parse_agents(
        [
            {"name": "alpha", "provider": "anthropic", "model": "claude-alpha", "base_url": url},
            {"name": "beta", "provider": "anthropic", "model": "claude-beta", "base_url": url},
        ]
    )
    prices = parse_prices({"claude-alpha": {"input": 3, "output": 15, "cache_read": 0.3}})
    configured = settings.model_copy(update={"agents": agents, "model_prices": prices})
    async with running_app(configured) as (_, state, client):
        yield state, client


async def chat(client: httpx.AsyncClient, key: str, message: str, agent: str, **more: Any) -> dict[str, Any]:
    r = await client.post(
        "/chat", json={"message": message, "agent": agent, **more}, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 200, r.text
    if more.get("stream"):
        return {}
    data: dict[str, Any] = r.json()
    return data


async def usage(client: httpx.AsyncClient, key: str, **params: str) -> list[dict[str, Any]]:
    r = await client.get("/usage", params=params, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def answers(state: Resources) -> list[Message]:
    async with state.sessions() as session:
        query = select(Message).where(Message.role == "assistant").order_by(Message.id)
        return list((await session.execute(query)).scalars())


async def test_usage_sums_equal_the_turns_made_grouped_three_ways_per_key(
    two_agents: tuple[Resources, httpx.AsyncClient],
) -> None:
    state, client = two_agents
    mine, theirs = await make_key(state, "mine"), await make_key(state, "theirs")
    first = await chat(client, mine, f"add {TOOL}", "alpha")  # two model calls
    await chat(client, mine, "again", "alpha", conversation_id=first["conversation_id"])
    await chat(client, mine, "streamed", "beta", stream=True)
    await chat(client, theirs, "not mine", "alpha")

    rows = await answers(state)
    assert len(rows) == 4
    mine_rows, theirs_rows = rows[:3], rows[3:]

    def total(messages: list[Message]) -> dict[str, int]:
        return {
            "input_tokens": sum(m.input_tokens for m in messages),
            "output_tokens": sum(m.output_tokens for m in messages),
            "cache_read_input_tokens": sum(m.cache_read_tokens for m in messages),
            "cache_creation_input_tokens": sum(m.cache_creation_tokens for m in messages),
        }

    today = datetime.now(UTC).date().isoformat()
    (day,) = await usage(client, mine, group_by="day")
    assert day["day"] == today
    assert set(day) == {"day", "turns", "model_calls", *TOKENS, "cost_usd"}
    assert (day["turns"], day["model_calls"]) == (3, 4)
    assert {k: day[k] for k in TOKENS} == total(mine_rows)
    assert day["input_tokens"] > 0
    assert day["output_tokens"] > 0
    assert day["cost_usd"] is None  # claude-beta has no price

    by_agent = {item["agent"]: item for item in await usage(client, mine, group_by="agent")}
    assert set(by_agent) == {"alpha", "beta"}
    assert (by_agent["alpha"]["turns"], by_agent["alpha"]["model_calls"]) == (2, 3)
    assert (by_agent["beta"]["turns"], by_agent["beta"]["model_calls"]) == (1, 1)
    assert {k: by_agent["alpha"][k] for k in TOKENS} == total(mine_rows[:2])
    assert {k: by_agent["beta"][k] for k in TOKENS} == total(mine_rows[2:])
    alpha = total(mine_rows[:2])
    expected = (alpha["input_tokens"] * 3 + alpha["output_tokens"] * 15 + alpha["cache_read_input_tokens"] * 0.3
                + alpha["cache_creation_input_tokens"] * 3) / 1_000_000  # fmt: skip
    assert by_agent["alpha"]["cost_usd"] == pytest.approx(expected)
    assert by_agent["beta"]["cost_usd"] is None

    by_model = {item["model"]: item for item in await usage(client, mine, group_by="model")}
    assert set(by_model) == {"claude-alpha", "claude-beta"}
    assert {k: by_model["claude-alpha"][k] for k in TOKENS} == alpha
    assert by_model["claude-alpha"]["cost_usd"] == pytest.approx(expected)

    # Per key only: the other key sees its own turn, and none of mine.
    (their_day,) = await usage(client, theirs, group_by="day")
    assert (their_day["turns"], their_day["model_calls"]) == (1, 1)
    assert {k: their_day[k] for k in TOKENS} == total(theirs_rows)

    # A range without turns is empty; a bad range is a 422.
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    assert await usage(client, mine, **{"from": yesterday, "to": yesterday}) == []
    bad = await client.get(
        "/usage", params={"from": today, "to": yesterday}, headers={"Authorization": f"Bearer {mine}"}
    )
    assert bad.status_code == 422, bad.text
    assert (await client.get("/usage")).status_code == 401


async def test_the_usage_row_is_written_by_the_statement_that_records_the_answer(
    state: Resources, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    def statements() -> float:
        return state.metrics.db_statements._value.get()  # type: ignore[no-any-return]

    since = datetime.now(UTC)
    await client.post("/chat", json={"message": "warm up"}, headers=auth)
    before = statements()
    r = await client.post("/chat", json={"message": f"use a tool {TOOL}"}, headers=auth)
    assert r.status_code == 200, r.text
    assert statements() - before == 2  # phase 1 and phase 3: the usage row adds none
    async with state.sessions() as session:
        answer = await session.get(Message, uuid.UUID(r.json()["message"]["id"]))
        assert answer is not None
        query = select(ModelUsage).where(ModelUsage.created_at >= since).order_by(ModelUsage.created_at)
        rows = (await session.execute(query)).scalars().all()
    assert [row.model_calls for row in rows] == [1, 2]
    assert (rows[-1].message_id, rows[-1].agent, rows[-1].model) == (answer.id, "agentchat", "claude-test")
    assert (rows[-1].input_tokens, rows[-1].output_tokens) == (answer.input_tokens, answer.output_tokens)
    assert rows[-1].created_at == answer.updated_at


async def test_sqlite_records_usage_in_the_answer_transaction(tmp_path: Any, settings: Settings) -> None:
    lite = await embedded(settings, tmp_path / "usage.db")
    async with running_app(lite) as (_, state, client):
        key = await make_key(state)
        await chat(client, key, f"tool {TOOL}", "agentchat")
        await chat(client, key, "streamed", "agentchat", stream=True)
        (day,) = await usage(client, key, group_by="day")
        assert (day["turns"], day["model_calls"]) == (2, 3)
        async with state.sessions() as session:
            tokens = (await session.execute(select(func.sum(Message.input_tokens)))).scalar_one()
        assert day["input_tokens"] == tokens > 0
        assert day["cost_usd"] is None
