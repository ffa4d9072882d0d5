"""Redis restarts, on a Redis of the test's own (the shared one is never touched).

A restart kills every pooled connection: the first command on each must be retried on a fresh
one, not fail (readiness, locks, limits and idempotency would step aside although Redis is up).
This Redis keeps nothing on disk, so a restart also loses its data: what that does to locks,
idempotency, limits and run logs is what README "Across replicas" documents, and what is tested
here.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from app.main import create_app
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.fixtures.redis_server import RedisServer, redis_server
from tests.helpers import eventually, live_server, sse_events

STEPPED_ASIDE = {"chat.degraded", "limits.unavailable"}


def logged(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """Log events written since the last call."""
    return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def app_connections(server: RedisServer, app_name: str) -> int:
    probe = server.client()
    try:
        return sum(1 for c in await probe.client_list() if c.get("name") == app_name)
    finally:
        await probe.aclose()


@pytest.fixture
async def private_redis() -> Any:
    async with redis_server() as server:
        yield server


async def test_the_first_probe_and_turn_after_a_restart_find_redis(
    settings: Settings, llm_server: FakeLLMServer, private_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    async with running_app(settings.model_copy(update={"redis_url": private_redis.url})) as (_, state, client):
        auth = bearer(await make_key(state))
        cid = (await client.post("/chat", json={"message": "first"}, headers=auth)).json()["conversation_id"]
        redis = state.redis
        assert redis is not None
        # Warm the pool: several connections at once, all back in it and idle afterwards.
        await asyncio.gather(*(redis.blpop(["warm-up"], timeout=0.2) for _ in range(8)))
        assert await app_connections(private_redis, settings.app_name) >= 8

        private_redis.restart_unnoticed()  # every one of those connections is dead now
        logged(capsys)

        ready = await client.get("/readyz")
        assert ready.status_code == 200, ready.text  # the very first probe
        assert ready.json()["checks"]["redis"] == "ok"
        calls = llm_server.state.request_count
        slow = asyncio.create_task(
            client.post("/chat", json={"message": "[[delay_first:1]] slow", "conversation_id": cid}, headers=auth)
        )
        await eventually(lambda: llm_server.state.request_count > calls)
        # The first turn took the conversation's lock (it did not step aside): a second one is refused.
        busy = await client.post("/chat", json={"message": "me too", "conversation_id": cid}, headers=auth)
        assert busy.status_code == 409, busy.text
        assert busy.json()["error"]["type"] == "conversation_busy"
        assert (await slow).status_code == 200
        events = [e["event"] for e in logged(capsys)]
        assert not STEPPED_ASIDE & set(events), events


async def test_a_turn_in_flight_loses_its_lock_when_redis_loses_its_data(
    settings: Settings, llm_server: FakeLLMServer, private_redis: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    quick_renewal = {"redis_url": private_redis.url, "lock_ttl_seconds": 1.0}  # renewed every ~0.33 s
    async with running_app(settings.model_copy(update=quick_renewal)) as (_, state, client):
        auth = bearer(await make_key(state))
        cid = (await client.post("/chat", json={"message": "first"}, headers=auth)).json()["conversation_id"]

        async def post(message: str) -> httpx.Response:
            return await client.post("/chat", json={"message": message, "conversation_id": cid}, headers=auth)

        def turn(message: str) -> asyncio.Task[httpx.Response]:
            return asyncio.create_task(post(message))

        calls = llm_server.state.request_count
        first = turn("[[delay_first:2]] first holder")
        await eventually(lambda: llm_server.state.request_count > calls)
        assert (
            await client.post("/chat", json={"message": "no", "conversation_id": cid}, headers=auth)
        ).status_code == 409
        logged(capsys)

        await private_redis.restart()  # the lock's key is gone with everything else
        seen: list[str] = []

        def lost() -> bool:
            seen.extend(e["event"] for e in logged(capsys))
            return "lock.lost" in seen

        await eventually(lost, timeout=3)  # the next renewal notices
        # The turn goes on, but the conversation is open again: another turn starts beside it.
        second = turn("[[delay_first:3]] second holder")
        await eventually(lambda: llm_server.state.request_count >= calls + 2)
        assert (await first).status_code == 200  # the first turn ran to its end and was recorded
        # Its release removed nothing but its own token: the second turn still holds the lock.
        late = await post("late")
        assert late.status_code == 409, late.text
        assert (await second).status_code == 200
        assert (
            await client.post("/chat", json={"message": "now", "conversation_id": cid}, headers=auth)
        ).status_code == 200
        seen.extend(e["event"] for e in logged(capsys))
        assert seen.count("lock.lost") == 1  # said once, not at every renewal
        messages = (await client.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
        assert [m["status"] for m in messages if m["role"] == "assistant"] == ["complete"] * 4


async def test_an_idempotent_retry_runs_again_once_redis_lost_its_record(
    settings: Settings, llm_server: FakeLLMServer, private_redis: RedisServer
) -> None:
    async with running_app(settings.model_copy(update={"redis_url": private_redis.url})) as (_, state, client):
        headers = {**bearer(await make_key(state)), "Idempotency-Key": "order-1"}
        body = {"message": "charge it once"}
        first = await client.post("/chat", json=body, headers=headers)
        calls = llm_server.state.request_count
        replay = await client.post("/chat", json=body, headers=headers)
        assert replay.json() == first.json()
        assert llm_server.state.request_count == calls  # replayed, not run
        await private_redis.restart()
        again = await client.post("/chat", json=body, headers=headers)
        assert again.status_code == 200, again.text
        assert llm_server.state.request_count == calls + 1  # run again: a second answer
        assert again.json()["message"]["id"] != first.json()["message"]["id"]
        conversations = (await client.get("/conversations", headers=headers)).json()["items"]
        assert len(conversations) == 2

        # A retry of a turn still running is refused (409) while Redis remembers it, and runs once it does not.
        slow = {**headers, "Idempotency-Key": "order-2"}
        body = {"message": "[[delay_first:2]] charge it slowly"}
        calls = llm_server.state.request_count
        running = asyncio.create_task(client.post("/chat", json=body, headers=slow))
        await eventually(lambda: llm_server.state.request_count > calls)
        refused = await client.post("/chat", json=body, headers=slow)
        assert refused.status_code == 409
        assert refused.json()["error"]["type"] == "idempotency_in_progress"
        await private_redis.restart()
        beside = await client.post("/chat", json=body, headers=slow)
        assert beside.status_code == 200, beside.text
        assert (await running).status_code == 200
        assert beside.json()["message"]["id"] != (await running).json()["message"]["id"]


async def test_limits_start_again_from_zero_once_redis_lost_what_they_counted(
    settings: Settings, llm_server: FakeLLMServer, private_redis: RedisServer
) -> None:
    one_at_a_time = {"redis_url": private_redis.url, "max_turns_in_flight_per_key": 1}
    async with running_app(settings.model_copy(update=one_at_a_time)) as (_, state, client):
        auth = bearer(await make_key(state))
        calls = llm_server.state.request_count
        running = asyncio.create_task(client.post("/chat", json={"message": "[[delay_first:2]] busy"}, headers=auth))
        await eventually(lambda: llm_server.state.request_count > calls)
        crowded = await client.post("/chat", json={"message": "beside it"}, headers=auth)
        assert crowded.status_code == 429
        assert crowded.json()["error"]["type"] == "too_many_turns"
        await private_redis.restart()
        # The turn in flight no longer holds its slot: another one is admitted beside it.
        assert (await client.post("/chat", json={"message": "beside it, now"}, headers=auth)).status_code == 200
        assert (await running).status_code == 200

    counted = {"redis_url": private_redis.url, "tokens_per_day": 1, "rate_limit_per_minute": 4}
    async with running_app(settings.model_copy(update=counted)) as (_, state, client):
        auth = bearer(await make_key(state))
        assert (await client.post("/chat", json={"message": "spend"}, headers=auth)).status_code == 200
        spent = await client.post("/chat", json={"message": "more"}, headers=auth)
        assert spent.status_code == 429
        assert spent.json()["error"]["type"] == "token_quota_exceeded"
        assert (await client.get("/conversations", headers=auth)).status_code == 200
        assert (await client.get("/conversations", headers=auth)).status_code == 200
        limited = await client.get("/conversations", headers=auth)  # the 5th request in a minute
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limited"

        await private_redis.restart()
        # What the limits counted is gone: the day's tokens and the last minute's requests.
        assert (await client.post("/chat", json={"message": "again"}, headers=auth)).status_code == 200


async def test_a_follower_on_another_replica_is_told_when_the_run_log_is_lost(
    settings: Settings, llm_server: FakeLLMServer, private_redis: RedisServer
) -> None:
    shared = settings.model_copy(update={"redis_url": private_redis.url, "llm_read_timeout": 10.0})
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(live_server(create_app(shared)))
        b = await stack.enter_async_context(live_server(create_app(shared)))
        auth = bearer(await make_key(a.state))
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        body = {"message": "[[words:1]] [[slow:4]] a quiet run", "stream": True}  # `start`, 4 s of quiet, …
        started = asyncio.Event()
        own: list[dict[str, Any]] = []

        async def on_a() -> None:
            async with http.stream("POST", f"{a.url}/chat", json=body, headers=auth) as r:
                seen = ""
                async for chunk in r.aiter_text():
                    seen += chunk
                    if "event: start" in seen:
                        started.set()
            own.extend(sse_events(seen))

        stream_a = asyncio.create_task(on_a())
        await asyncio.wait_for(started.wait(), 5)
        run_id = own[0]["data"]["run_id"] if own else None
        await eventually(lambda: a.state.runs.runs, timeout=2)
        run_id = run_id or str(next(iter(a.state.runs.runs)))
        followed: list[dict[str, Any]] = []
        caught_up = asyncio.Event()

        async def on_b() -> None:
            async with http.stream("GET", f"{b.url}/runs/{run_id}/events", headers=auth) as r:
                assert r.status_code == 200
                seen = ""
                async for chunk in r.aiter_text():
                    seen += chunk
                    if "event: start" in seen:
                        caught_up.set()
            followed.extend(sse_events(seen))

        follower = asyncio.create_task(on_b())
        await asyncio.wait_for(caught_up.wait(), 5)
        await private_redis.restart()  # the run's log is gone; the run itself goes on, on replica a
        await asyncio.wait_for(follower, 8)
        assert [e["event"] for e in followed] == ["start", "error"]
        assert followed[-1]["data"]["error"]["type"] == "unavailable"
        assert "gone" in followed[-1]["data"]["error"]["message"]

        await asyncio.wait_for(stream_a, 10)
        assert own[-1]["event"] == "end"  # the run's own stream is not affected
        cid = own[0]["data"]["conversation_id"]
        messages = (await http.get(f"{b.url}/conversations/{cid}/messages", headers=auth)).json()["items"]
        assert messages[-1]["status"] == "complete"
        assert messages[-1]["content"] == "word1"
        # Rejoining on another replica: the log is unknown there now (404, not a 500).
        assert (await http.get(f"{b.url}/runs/{run_id}/events", headers=auth)).status_code == 404
        assert (await http.post(f"{b.url}/runs/{run_id}/cancel", headers=auth)).status_code == 404
