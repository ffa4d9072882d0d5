"""Real Postgres, real Redis, and a local server that speaks the Anthropic Messages API.

Each test session gets its own Postgres database (migrated with Alembic); each test starts from
empty tables and its own Redis key prefix, so no test sees another's leftovers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic import command
from alembic.config import Config
from fastapi import FastAPI
from redis.asyncio import Redis
from starlette.types import Receive, Scope, Send

from app.auth.repository import ApiKeyRepository
from app.core.config import Settings
from app.main import create_app
from app.state import State
from tests.fakes.llm_server import FakeLLMServer
from tests.helpers import Live, live_server
from tests.services import admin_database_url, asyncpg_dsn, problems, redis_url

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    found = asyncio.run(problems())
    if found:
        pytest.exit("tests need real services: " + "; ".join(found), returncode=2)


def run_migrations(database_url: str, revision: str = "head", *, down: bool = False) -> None:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = database_url
    config.attributes["keep_logging"] = True
    (command.downgrade if down else command.upgrade)(config, revision)


async def _admin_execute(sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_database_url()))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[tuple[str, str]]:
    """A fresh, migrated database for this session: (SQLAlchemy URL, name)."""
    name = f"agentchat_test_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin_execute(f'CREATE DATABASE "{name}"'))
    url = admin_database_url().rsplit("/", 1)[0] + f"/{name}"
    try:
        run_migrations(url)
        yield url, name
    finally:
        asyncio.run(_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def llm_server(fake_llm: FakeLLMServer) -> FakeLLMServer:
    fake_llm.reset()
    return fake_llm


async def _truncate(url: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        await conn.execute("TRUNCATE api_keys, conversations, messages, memories CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def app_name() -> str:
    return f"agentchat-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def settings(pg_database: tuple[str, str], llm_server: FakeLLMServer, app_name: str) -> Settings:
    url, _ = pg_database
    await _truncate(url)
    return Settings(
        database_url=url,
        redis_url=redis_url(),
        redis_key_prefix=f"test:{uuid.uuid4().hex[:8]}:",
        anthropic_api_key="test-anthropic-key",  # type: ignore[arg-type]
        anthropic_base_url=llm_server.url,
        llm_provider="anthropic",
        llm_model="claude-test",
        llm_max_retries=0,
        llm_read_timeout=5.0,
        turn_timeout=10.0,
        db_pool_size=5,
        db_max_overflow=0,
        app_name=app_name,
        log_format="json",
        log_level="INFO",
    )


class WithState:
    """Give requests the lifespan state, as a server would (httpx's ASGITransport runs no lifespan)."""

    def __init__(self, app: FastAPI, state: State) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"] = dict(self.state)
        await self.app(scope, receive, send)


@asynccontextmanager
async def lifespan_in_task(app: FastAPI) -> AsyncIterator[State]:
    """Run the app's lifespan in a task of its own, as a server does.

    Its task groups must be entered and exited in one task; a fixture's setup and teardown may
    not share one.
    """
    ready: asyncio.Future[State] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def host() -> None:
        try:
            async with app.router.lifespan_context(app) as state:
                ready.set_result(state)  # type: ignore[arg-type]
                await stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    task = asyncio.create_task(host())
    try:
        yield await ready
    finally:
        stop.set()
        await task


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[FastAPI, State, httpx.AsyncClient]]:
    app = create_app(settings)
    async with lifespan_in_task(app) as state:
        transport = httpx.ASGITransport(app=WithState(app, state))  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield app, state, client


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[tuple[FastAPI, State, httpx.AsyncClient]]:
    async with running_app(settings) as served:
        yield served


@pytest.fixture
def state(served: tuple[FastAPI, State, httpx.AsyncClient]) -> State:
    return served[1]


@pytest.fixture
def client(served: tuple[FastAPI, State, httpx.AsyncClient]) -> httpx.AsyncClient:
    return served[2]


async def make_key(state: State, name: str = "test") -> str:
    async with state["sessions"]() as session, session.begin():
        _, key = await ApiKeyRepository(session).create(name)
    return key


@pytest.fixture
async def api_key(state: State) -> str:
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
