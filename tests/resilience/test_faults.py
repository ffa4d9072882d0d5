"""The fault-injection suite: the real server in a subprocess (`-X dev`, a pool of 5, no overflow),
real Postgres and Redis, the fake model, and hundreds of turns with faults mixed in.

After every scenario: connections back to baseline and never above the pool size, nothing idle in
transaction, no Redis client left behind, no upstream stream left open, no leak markers or
unexpected tracebacks in the service log, every accepted user message stored, and every touched
conversation able to take a normal next turn.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.models import Message
from testkit.fake_llm import FakeLLMServer
from testkit.faults import MIX
from tests.fixtures.app import make_key_with
from tests.fixtures.services import admin_database_url
from tests.helpers import eventually, sse_events
from tests.resilience.server import (
    PoolWatch,
    ServerProcess,
    kill_pg_connections,
    pg_connections,
    pool_high_water,
    redis_clients,
)

pytestmark = pytest.mark.e2e
# A connection killed mid-write is logged with its traceback (by us, or by SQLAlchemy's pool): expected there.
KILLED_CONNECTION_TRACES = ("AdminShutdown", "ConnectionDoesNotExist", "ConnectionError")
POOL = 5
SEED = 20261122


class Turns:
    """Drives turns and remembers which user messages the service accepted."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.headers = url, {"Authorization": f"Bearer {key}"}
        self.accepted: dict[str, str] = {}  # user text → conversation id
        self.outcomes: Counter[str] = Counter()

    async def one(
        self, http: httpx.AsyncClient, text: str, behaviour: str, rng: random.Random, conversation_id: str | None = None
    ) -> None:
        stream = behaviour == "leave" or rng.random() < 0.5
        body = {"message": text, "stream": stream, "conversation_id": conversation_id}
        try:
            if not stream:
                r = await http.post("/chat", json=body, headers=self.headers)
                self.outcomes[f"json {r.status_code}"] += 1
                assert r.status_code != 500, r.text
                assert r.status_code < 500 or r.json()["error"]["type"] != "internal_error"
                if r.status_code == 200 or r.json()["error"]["type"].startswith("upstream"):
                    if "conversation_id" in r.json():
                        self.accepted[text] = r.json()["conversation_id"]
                return
            async with http.stream("POST", "/chat", json=body, headers=self.headers) as r:
                if r.status_code != 200:
                    self.outcomes[f"stream {r.status_code}"] += 1
                    assert r.status_code != 500
                    return
                seen, leave_after = "", rng.randint(1, 6)
                async for chunk in r.aiter_text():
                    seen += chunk
                    if self.url and "event: start" in seen and text not in self.accepted:
                        self.accepted[text] = sse_events(seen.split("\n\n", 1)[0] + "\n\n")[0]["data"][
                            "conversation_id"
                        ]
                    if behaviour == "leave" and seen.count("\n\n") >= leave_after:
                        self.outcomes["stream left"] += 1
                        return
                last = sse_events(seen)[-1]["event"]
                self.outcomes[f"stream {last}"] += 1
                assert last in {"end", "error"}
        except httpx.TransportError as exc:
            self.outcomes[f"transport {type(exc).__name__}"] += 1


async def traffic(turns: Turns, count: int, concurrency: int, seed: int) -> None:
    rng = random.Random(seed)
    population = [(m, b) for w, m, b in MIX for _ in range(w)]
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        base_url=turns.url, timeout=30, limits=httpx.Limits(max_connections=concurrency * 2)
    ) as http:

        async def run(n: int) -> None:
            message, behaviour = rng.choice(population)
            async with gate:
                await turns.one(http, f"{message} #{n}-{uuid.uuid4().hex[:6]}", behaviour, rng)

        await asyncio.gather(*(run(n) for n in range(count)))


async def check_invariants(
    server: ServerProcess, fake: FakeLLMServer, turns: Turns, settings: Settings, redis: Redis
) -> None:
    app_name = settings.app_name
    await eventually(lambda: fake.state.open_streams == 0, timeout=5)
    states = await pg_connections(admin_database_url(), app_name)
    assert "idle in transaction" not in states, states
    assert sum(states.values()) <= POOL
    # A pool, not a leak: never above its cap (plus the run-cancel subscriber), zero after exit.
    assert await redis_clients(redis, app_name) <= settings.redis_max_connections + 1
    assert fake.state.rejections == []
    # Every accepted user message is stored.
    engine = create_engine(settings.model_copy(update={"app_name": "agentchat-test-checker"}))
    try:
        async with create_sessionmaker(engine)() as session:
            for text, conversation_id in turns.accepted.items():
                stored = await session.scalar(
                    select(func.count())
                    .select_from(Message)
                    .where(Message.conversation_id == uuid.UUID(conversation_id), Message.role == "user")
                )
                assert stored, f"lost user message {text!r}"
    finally:
        await engine.dispose()
    # Every touched conversation takes a normal next turn.
    conversations = sorted(set(turns.accepted.values()))
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        gate = asyncio.Semaphore(10)

        async def next_turn(cid: str) -> None:
            for _ in range(50):
                async with gate:
                    r = await http.post(
                        "/chat", json={"message": "all good?", "conversation_id": cid}, headers=turns.headers
                    )
                # A turn whose client left may still be recording its partial answer: busy, briefly.
                if r.status_code != 409:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 200, r.text
            assert r.json()["message"]["status"] == "complete"

        await asyncio.gather(*(next_turn(cid) for cid in conversations))
    assert fake.state.rejections == []


@pytest.fixture
async def server(settings: Settings, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(
        settings.model_copy(update={"db_pool_size": POOL, "db_max_overflow": 0}), tmp_path / "server.log"
    )
    await proc.start()
    try:
        yield proc
    finally:
        proc.kill()


async def key_for(settings: Settings) -> str:
    engine = create_engine(settings.model_copy(update={"app_name": "agentchat-test-setup"}))
    try:
        return await make_key_with(create_sessionmaker(engine))
    finally:
        await engine.dispose()


async def test_mixed_faults_leak_nothing_and_lose_nothing(
    server: ServerProcess, settings: Settings, llm_server: FakeLLMServer, redis_client: Redis
) -> None:
    turns = Turns(server.url, await key_for(settings))
    async with PoolWatch(admin_database_url(), settings.app_name) as watch:
        await traffic(turns, count=300, concurrency=40, seed=SEED)
    peak = await pool_high_water(server.url)
    print("outcomes:", dict(turns.outcomes), "pool high-water mark:", peak, "sampled connections:", watch.peak)
    assert peak == POOL  # the pool was used to the full, and never past it
    assert watch.peak <= POOL  # and nothing connected beside it
    assert turns.outcomes["stream left"] > 0
    await check_invariants(server, llm_server, turns, settings, redis_client)
    assert await server.terminate() == 0
    assert await pg_connections(admin_database_url(), settings.app_name) == {}
    assert await redis_clients(redis_client, settings.app_name) == 0
    assert server.log_problems() == []


async def test_postgres_and_redis_faults_fail_cleanly_and_recover(
    server: ServerProcess, settings: Settings, llm_server: FakeLLMServer, redis_client: Redis
) -> None:
    turns = Turns(server.url, await key_for(settings))

    async def kill_repeatedly() -> int:
        killed = 0
        for _ in range(5):
            await asyncio.sleep(0.4)
            killed += await kill_pg_connections(admin_database_url(), settings.app_name)
            for client in await redis_client.client_list():
                if client.get("name") == settings.app_name:
                    await redis_client.client_kill_filter(_id=client["id"])
        return killed

    async with PoolWatch(admin_database_url(), settings.app_name) as watch:
        killer = asyncio.create_task(kill_repeatedly())
        await traffic(turns, count=200, concurrency=30, seed=SEED + 1)
        killed = await killer
    peak = await pool_high_water(server.url)
    print("outcomes:", dict(turns.outcomes), "connections killed:", killed, "high-water:", peak, "sampled:", watch.peak)
    assert killed > 0
    assert peak <= POOL
    assert watch.peak <= POOL
    # Recovery without a restart: ready again within seconds.
    async with httpx.AsyncClient(base_url=server.url) as http:

        async def ready() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await eventually(ready, timeout=10, interval=0.2)
    await check_invariants(server, llm_server, turns, settings, redis_client)
    assert await server.terminate() == 0
    assert server.log_problems(allowed=KILLED_CONNECTION_TRACES) == []


async def test_sigterm_with_streams_in_flight(
    server: ServerProcess, settings: Settings, llm_server: FakeLLMServer, redis_client: Redis
) -> None:
    turns = Turns(server.url, await key_for(settings))
    results: list[str] = []

    async def stream(n: int, words: int) -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            text = f"[[words:{words}]] [[slow:0.05]] #{n}"
            async with http.stream("POST", "/chat", json={"message": text, "stream": True}, headers=turns.headers) as r:
                seen = ""
                async for chunk in r.aiter_text():
                    seen += chunk
                    if "event: start" in seen and text not in turns.accepted:
                        turns.accepted[text] = sse_events(seen)[0]["data"]["conversation_id"]
            events = sse_events(seen)
            results.append(events[-1]["data"]["error"]["type"] if events[-1]["event"] == "error" else "end")

    # Short streams finish within the grace period; long ones are interrupted at its end.
    tasks = [asyncio.create_task(stream(n, 20 if n % 2 else 400)) for n in range(20)]
    # Every stream started; the long ones are certainly still running when SIGTERM arrives.
    await eventually(lambda: len(turns.accepted) == 20 and llm_server.state.open_streams >= 10, timeout=10)
    code = await server.terminate()
    await asyncio.gather(*tasks)
    assert code == 0
    assert sorted(Counter(results).items()) == [("end", 10), ("shutdown", 10)]
    assert await pg_connections(admin_database_url(), settings.app_name) == {}
    assert llm_server.state.open_streams == 0
    assert server.log_problems() == []
    # Every message is there, and the interrupted answers are recorded as incomplete.
    await server.start()
    await check_invariants(server, llm_server, turns, settings, redis_client)
    async with httpx.AsyncClient(base_url=server.url) as http:
        statuses: Counter[str] = Counter()
        for cid in set(turns.accepted.values()):
            items = (await http.get(f"/conversations/{cid}/messages", headers=turns.headers)).json()["items"]
            statuses[items[1]["status"]] += 1
    assert statuses == {"complete": 10, "incomplete": 10}
