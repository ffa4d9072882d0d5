"""A new conversation's JSON turn sends its phase-1 statement and asks the model while Postgres runs
it; nothing of the turn goes out before that statement committed, and its failure is phase 1's.

Postgres is made slow at will by holding a lock that phase 1's INSERT must wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

import asyncpg  # type: ignore[import-untyped]
import httpx
from sqlalchemy import func, select

from app.agents.catalog import AgentCatalog
from app.auth.repository import ApiKeyRepository
from app.core.config import Settings
from app.llm.base import ChatModel, LLMRequest
from app.main import create_app
from app.models import Conversation, Message
from app.state import Resources
from app.turns.start import TurnRequest, TurnService
from app.turns.turn import Turn
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.helpers import Live, eventually, live_server, pg_activity, statements_sent


@asynccontextmanager
async def table_locked(settings: Settings, table: str) -> AsyncIterator[None]:
    """Hold a lock on `table` that every write to it waits for, until the block ends."""
    conn = await asyncpg.connect(settings.database_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        async with conn.transaction():
            await conn.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


class WatchedModel:
    """The app's model, noting how many statements the service had sent when each call began."""

    def __init__(self, state: Resources) -> None:
        self.state, self.inner = state, state.agents.default.llm
        self.statements_at_call: list[float] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def stream(self, request: LLMRequest) -> object:
        self.statements_at_call.append(statements_sent(self.state))
        return self.inner.stream(request)


def conversations_locked(settings: Settings) -> contextlib.AbstractAsyncContextManager[None]:
    return table_locked(settings, "conversations")


async def stored(state: Resources) -> tuple[int, list[str]]:
    async with state.sessions() as session:
        conversations = (await session.execute(select(func.count()).select_from(Conversation))).scalar_one()
        statuses = (await session.execute(select(Message.status).order_by(Message.id))).scalars().all()
    return conversations, [str(s) for s in statuses]


async def test_the_model_is_asked_while_phase_1_is_still_running(
    settings: Settings, state: Resources, client: httpx.AsyncClient, auth: dict[str, str], llm_server: FakeLLMServer
) -> None:
    async with conversations_locked(settings):
        answer = asyncio.create_task(client.post("/chat", json={"message": "hello"}, headers=auth))
        # The model has the request although the user's message cannot be stored yet…
        await eventually(lambda: len(llm_server.state.request_bodies()) == 1, timeout=5)
        await asyncio.sleep(0.2)
        # …and nothing comes back before it is.
        assert not answer.done()
        assert await stored(state) == (0, [])
    r = await answer
    assert r.status_code == 200, r.text
    assert r.json()["message"]["status"] == "complete"
    assert await stored(state) == (1, ["complete", "complete"])


async def test_the_insert_is_sent_before_the_model_request_is_built(settings: Settings) -> None:
    # Then Postgres commits it while the SDK builds the request, and it is done when the model answers.
    # No token quota: its check (a Redis round trip before the model call) would let it go first anyway.
    async with live_server(create_app(settings.model_copy(update={"tokens_per_day": 0}))) as live:
        state = live.state
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        async with httpx.AsyncClient(base_url=live.url, headers=auth) as http:
            assert (await http.post("/chat", json={"message": "warm"})).status_code == 200  # the key is cached
            watched = WatchedModel(state)
            catalog = state.agents
            served = dataclasses.replace(catalog.default, llm=cast(ChatModel, watched))
            state = live.swap(agents=AgentCatalog([served], served.name))
            try:
                before = statements_sent(state)
                r = await http.post("/chat", json={"message": "hello"})
            finally:
                live.swap(agents=catalog)
    assert r.status_code == 200, r.text
    assert watched.statements_at_call == [before + 1]  # the INSERT, already on its way


async def test_the_answer_is_rendered_while_phase_3_waits_on_postgres(settings: Settings, state: Resources) -> None:
    # What a door does with `while_storing`: the client's answer, ready when the UPDATE commits.
    async with state.sessions() as session, session.begin():
        key, _ = await ApiKeyRepository(session).create("render")
    async with state.db.transactions() as transactions:
        request = TurnRequest(owner_id=key.id, message="hello")
        started = await TurnService(state).start(request, transactions, respond=lambda _: {})
        assert isinstance(started, Turn)

        async def ignore(_: object) -> None:
            return None

        await started.execute(ignore)
        calls: list[bool] = []
        async with table_locked(settings, "messages"):
            recording = asyncio.create_task(started.record(while_storing=lambda: calls.append(recording.done())))
            await asyncio.sleep(0.3)
            assert calls == [False]  # once, while the UPDATE waits for the lock
            assert not recording.done()
        assert await recording is True
        assert calls == [False]


async def test_a_stream_still_stores_its_message_before_the_model_is_asked(
    settings: Settings, client: httpx.AsyncClient, auth: dict[str, str], llm_server: FakeLLMServer
) -> None:
    # A stream's `start` event tells the client its message is stored: no overlap there.
    async with conversations_locked(settings):
        answer = asyncio.create_task(client.post("/chat", json={"message": "hello", "stream": True}, headers=auth))
        await asyncio.sleep(0.5)
        assert llm_server.state.request_bodies() == []
    assert (await answer).status_code == 200


async def test_with_another_turn_running_phase_1_goes_first(
    settings: Settings, client: httpx.AsyncClient, auth: dict[str, str], llm_server: FakeLLMServer
) -> None:
    # A busy loop has other work for the INSERT's wait: there, overlapping only costs throughput.
    running = asyncio.create_task(client.post("/chat", json={"message": "[[slow:2]] first"}, headers=auth))
    await eventually(lambda: len(llm_server.state.request_bodies()) == 1, timeout=5)
    async with conversations_locked(settings):
        second = asyncio.create_task(client.post("/chat", json={"message": "second"}, headers=auth))
        await asyncio.sleep(0.5)
        assert len(llm_server.state.request_bodies()) == 1  # not asked before its message is stored
    assert (await second).status_code == 200
    assert (await running).status_code == 200


async def test_a_phase_1_that_fails_ends_the_turn_at_once_with_its_503_and_stores_nothing(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    # The INSERT gives up after 300 ms (statement_timeout); the model would take 5 s to answer.
    quick = settings.model_copy(update={"db_statement_timeout_ms": 300, "max_turns_in_flight_per_key": 1})
    async with running_app(quick) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        async with conversations_locked(settings):
            started = time.monotonic()
            r = await client.post("/chat", json={"message": "[[slow:5]] hello"}, headers=auth)
            elapsed = time.monotonic() - started
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "database_unavailable"
        assert r.headers["retry-after"] == "2"
        assert elapsed < 4, "the turn waited for a model answer it could not use"
        assert len(llm_server.state.request_bodies()) == 1  # it had been asked: the call was cut short
        assert await stored(state) == (0, [])
        # The key's turn slot was given back: the next turn runs.
        ok = await client.post("/chat", json={"message": "again"}, headers=auth)
        assert ok.status_code == 200, ok.text


async def test_a_client_that_leaves_before_phase_1_committed_still_has_its_message_recorded(
    settings: Settings, live: Live, live_key: str, llm_server: FakeLLMServer, app_name: str
) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        async with conversations_locked(settings):
            auth = {"Authorization": f"Bearer {live_key}"}
            asking = asyncio.create_task(http.post("/chat", json={"message": "[[slow:3]] hello"}, headers=auth))
            await eventually(lambda: len(llm_server.state.request_bodies()) == 1, timeout=5)
            asking.cancel()  # the client hangs up while its INSERT still waits for the lock
            with contextlib.suppress(asyncio.CancelledError):
                await asking
            await asyncio.sleep(0.3)  # the disconnect reaches the turn first; then the INSERT may go on

    # Stored once the lock went: the user's message, and the answer recorded as interrupted.
    async def recorded() -> bool:
        return await stored(live.state) == (1, ["complete", "incomplete"])

    await eventually(recorded, timeout=5)
    async with live.state.sessions() as session:
        answer = (await session.execute(select(Message).where(Message.role == "assistant"))).scalar_one()
    assert answer.stop_reason == "client_disconnected"
    engine = live.state.engine
    await eventually(lambda: engine.pool.checkedout() == 0, timeout=2.0)  # type: ignore[attr-defined]
    assert "idle in transaction" not in await pg_activity(live.state.sessions, app_name)
