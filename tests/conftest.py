"""The suite's pytest fixtures: real Postgres, real Redis, and a local server that speaks the
Anthropic Messages API. What they are built from lives in tests/fixtures/ (import from there).

Each test session gets its own Postgres database (migrated with Alembic); each test starts from
empty tables and its own Redis key prefix, so no test sees another's leftovers. Tests that need
no service (history repair, the calculator, the layers) run without Postgres and Redis.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis

from app.core.config import Settings
from app.main import create_app
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.fixtures.database import session_database, truncate
from tests.fixtures.services import redis_url
from tests.helpers import Live, live_server


@pytest.fixture(scope="session")
def pg_database() -> Iterator[tuple[str, str]]:
    """A fresh, migrated database for this session: (SQLAlchemy URL, name)."""
    with session_database() as database:
        yield database


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def llm_server(fake_llm: FakeLLMServer) -> FakeLLMServer:
    fake_llm.reset()
    return fake_llm


@pytest.fixture
def app_name() -> str:
    return f"agentchat-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def settings(pg_database: tuple[str, str], llm_server: FakeLLMServer, app_name: str) -> Settings:
    url, _ = pg_database
    await truncate(url)
    return Settings(
        database_url=url,
        redis_url=redis_url(),
        redis_key_prefix=f"test:{uuid.uuid4().hex[:8]}:",
        anthropic_api_key="test-anthropic-key",
        anthropic_base_url=llm_server.url,
        llm_provider="anthropic",
        llm_model="claude-test",
        llm_max_retries=0,
        llm_read_timeout=5.0,
        turn_timeout=10.0,
        db_pool_size=5,
        db_max_overflow=0,
        # Limits are on by default; tests that exercise them set their own. The request limit is
        # off here because a fuzzing or fault test sends hundreds of requests with one key.
        rate_limit_per_minute=0,
        app_name=app_name,
        log_format="json",
        log_level="INFO",
    )


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, Resources, httpx.AsyncClient]]:
    async with running_app(settings) as served:
        yield served


@pytest.fixture
def state(served: tuple[FastAPI, Resources, httpx.AsyncClient]) -> Resources:
    return served[1]


@pytest.fixture
def client(served: tuple[FastAPI, Resources, httpx.AsyncClient]) -> httpx.AsyncClient:
    return served[2]


@pytest.fixture
async def api_key(state: Resources) -> str:
    return await make_key(state)


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url())
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def live(settings: Settings) -> AsyncIterator[Live]:
    """The app behind a real uvicorn server in this loop: real sockets, real client disconnects."""
    async with live_server(create_app(settings)) as server:
        yield server


@pytest.fixture
async def live_key(live: Live) -> str:
    return await make_key(live.state)
