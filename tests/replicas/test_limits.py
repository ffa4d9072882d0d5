"""Per-key limits are exact across replicas: N replicas admit the limit, not N times it."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from app.core.config import Settings
from tests.conftest import make_key, running_app
from tests.fakes.llm_server import FakeLLMServer
from tests.helpers import Live, free_port


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def replica_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"rate_limit_per_minute": 6})


async def test_a_per_key_limit_of_n_admits_n_across_replicas(replicas: tuple[Live, Live], owner_key: str) -> None:
    a, b = replicas
    if time.time() % 60 > 55:  # keep the burst inside one fixed window
        await asyncio.sleep(61 - time.time() % 60)
    async with httpx.AsyncClient(timeout=30) as http:
        responses = await asyncio.gather(
            *(http.get(f"{(a if n % 2 else b).url}/conversations", headers=auth(owner_key)) for n in range(14))
        )
    statuses = sorted(r.status_code for r in responses)
    # 6 per minute; the key was created without a request, so the 14 are the only ones counted.
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
