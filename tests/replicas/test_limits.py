"""Per-key limits are exact across replicas: N replicas admit the limit, not N times it."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.core.config import Settings
from testkit.fake_llm import FakeLLMServer
from testkit.net import free_port
from tests.fixtures.app import make_key, running_app
from tests.helpers import Live


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def replica_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"rate_limit_per_minute": 6})


async def test_a_per_key_limit_of_n_admits_n_across_replicas(replicas: tuple[Live, Live], owner_key: str) -> None:
    a, b = replicas
    async with httpx.AsyncClient(timeout=30) as http:
        responses = await asyncio.gather(
            *(http.get(f"{(a if n % 2 else b).url}/conversations", headers=auth(owner_key)) for n in range(14))
        )
    statuses = sorted(r.status_code for r in responses)
    # 6 in any 60 s (a sliding window: no edge to burst across); the key was created without a
    # request, so the 14 are the only ones counted.
    assert statuses.count(200) == 6
    assert statuses.count(429) == 8
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["type"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "6"
    assert refused.headers["ratelimit-remaining"] == "0"


async def test_tokens_per_day_quota(settings: Settings, llm_server: FakeLLMServer) -> None:
    async with running_app(settings.model_copy(update={"tokens_per_day": 30})) as (_, state, client):
        key = await make_key(state)
        first = await client.post("/chat", json={"message": "[[words:40]]"}, headers=auth(key))
        assert first.status_code == 200
        refused = await client.post("/chat", json={"message": "more"}, headers=auth(key))
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "token_quota_exceeded"
        assert int(refused.headers["retry-after"]) <= 86_400
        # Another key has its own quota.
        other = await make_key(state, "other")
        assert (await client.post("/chat", json={"message": "hi"}, headers=auth(other))).status_code == 200


async def test_redis_down_degrades_but_chat_works(settings: Settings, llm_server: FakeLLMServer) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0", "rate_limit_per_minute": 5})
    async with running_app(down) as (_, state, client):
        key = await make_key(state)
        r = await client.post("/chat", json={"message": "hello"}, headers={**auth(key), "Idempotency-Key": "x"})
        assert r.status_code == 200, r.text
        cid = r.json()["conversation_id"]
        r = await client.post(
            "/chat", json={"message": "again", "conversation_id": cid, "stream": True}, headers=auth(key)
        )
        assert r.status_code == 200
        assert "event: end" in r.text
        assert (await client.get("/readyz")).json()["checks"]["redis"].startswith("failed")


async def test_a_window_edge_does_not_double_the_limit(settings: Settings, llm_server: FakeLLMServer) -> None:
    """A fixed window let 2N through around its edge; the sliding window admits N in any 60 s."""
    async with running_app(settings.model_copy(update={"rate_limit_per_minute": 4})) as (_, state, client):
        key = await make_key(state)
        statuses = []
        for _ in range(6):  # spread over ~3 s, across a whole-second (and possibly a minute) edge
            statuses.append((await client.get("/conversations", headers=auth(key))).status_code)
            await asyncio.sleep(0.5)
        assert statuses == [200] * 4 + [429] * 2
        refused = await client.get("/conversations", headers=auth(key))
        assert 55 <= int(refused.headers["retry-after"]) <= 60  # when the oldest of the four leaves


async def test_turns_in_flight_per_key_are_capped(settings: Settings, llm_server: FakeLLMServer) -> None:
    capped = settings.model_copy(update={"max_turns_in_flight_per_key": 2})
    async with running_app(capped) as (_, state, client):
        key, other = await make_key(state), await make_key(state, "other")
        slow = [
            asyncio.create_task(client.post("/chat", json={"message": "[[delay_first:1]] slow"}, headers=auth(key)))
            for _ in range(2)
        ]
        await asyncio.sleep(0.3)
        third = await client.post("/chat", json={"message": "one more"}, headers=auth(key))
        assert third.status_code == 429
        assert third.json()["error"]["type"] == "too_many_turns"
        assert third.headers["retry-after"] == "1"
        assert (await client.post("/chat", json={"message": "mine"}, headers=auth(other))).status_code == 200
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
        # Slots come back when turns are recorded; a refused turn stored nothing.
        assert (await client.post("/chat", json={"message": "now"}, headers=auth(key))).status_code == 200
        listed = (await client.get("/conversations", headers=auth(key))).json()["items"]
        assert len(listed) == 3


async def test_the_token_quota_is_checked_before_each_model_call(settings: Settings, llm_server: FakeLLMServer) -> None:
    """A turn that spends the quota in its first step stops before its second, not after eight."""
    tools = '[[tool:calculator {"expression": "1+1"}]] [[tool_chain:5]] [[words:60]]'
    async with running_app(settings.model_copy(update={"tokens_per_day": 5})) as (_, state, client):
        key = await make_key(state)
        calls = llm_server.state.request_count
        r = await client.post("/chat", json={"message": tools}, headers=auth(key))
        assert r.status_code == 429, r.text
        assert r.json()["error"]["type"] == "token_quota_exceeded"
        assert llm_server.state.request_count - calls == 1  # the second call was never made
        items = (await client.get("/conversations", headers=auth(key))).json()["items"]
        messages = (await client.get(f"/conversations/{items[0]['id']}/messages", headers=auth(key))).json()
        assert messages["items"][-1]["status"] == "error"
        assert messages["items"][-1]["tool_calls"][0]["name"] == "calculator"  # what it did is kept
