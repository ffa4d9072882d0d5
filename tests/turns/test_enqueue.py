"""`multitask: "enqueue"`: a message sent while a turn of its conversation runs is stored at once and
answered after it, in arrival order, on whichever replica received it; the history stays in turn
order (user, answer, user, answer…) and valid for the model."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.chat.router import EVENTS
from app.core.config import Settings
from app.main import create_app
from app.models import Conversation, Message, QueuedMessage
from app.state import Resources
from app.turns import queue
from app.turns.start import TurnService
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import embedded, make_key, running_app
from tests.helpers import eventually, live_server, sse_events, statements_sent


async def history(state: Resources, conversation_id: str) -> list[tuple[str, str, str]]:
    """(role, status, text) of every message, in the stored order."""
    async with state.sessions() as session:
        query = select(Message).where(Message.conversation_id == uuid.UUID(conversation_id)).order_by(Message.id)
        rows = (await session.execute(query)).scalars()
        return [(m.role, m.status, "".join(b.get("text", "") for b in m.content)) for m in rows]


async def queued_count(state: Resources, conversation_id: str) -> int:
    async with state.sessions() as session:
        query = select(func.count()).where(QueuedMessage.conversation_id == uuid.UUID(conversation_id))
        return int((await session.execute(query)).scalar_one())


async def running(state: Resources, conversation_id: str) -> bool:
    return any(status == "in_progress" for _, status, _ in await history(state, conversation_id))


async def opened(client: httpx.AsyncClient, auth: dict[str, str]) -> str:
    r = await client.post("/chat", json={"message": "hello"}, headers=auth)
    assert r.status_code == 200, r.text
    cid: str = r.json()["conversation_id"]
    return cid


def assert_turn_order(rows: list[tuple[str, str, str]]) -> None:
    """User, answer, user, answer…: each answer complete and echoing the message before it."""
    assert [role for role, _, _ in rows] == ["user", "assistant"] * (len(rows) // 2), rows
    for (_, _, asked), (_, status, said) in zip(rows[::2], rows[1::2], strict=True):
        assert status == "complete"
        assert said == f"echo: {asked.split(' [[')[0]}", (asked, said)  # the fake model drops directives


async def test_five_messages_at_once_across_two_replicas_are_answered_in_order(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    async with running_app(settings) as (_, state, a), running_app(settings) as (_, _other, b):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(a, auth)

        async def send(client: httpx.AsyncClient, text: str) -> httpx.Response:
            body = {"message": text, "conversation_id": cid, "multitask": "enqueue"}
            return await client.post("/chat", json=body, headers=auth)

        # Five at once, alternating replicas: one runs, the others queue (each answered with its own).
        sent = await asyncio.gather(*(send((a, b)[i % 2], f"m{i} [[slow:0.2]]") for i in range(5)))
        for i, r in enumerate(sent):
            assert r.status_code == 200, r.text
            assert r.json()["message"]["content"] == f"echo: m{i}"
            assert r.json()["stop_reason"] == "end_turn"
        rows = await history(state, cid)
        assert len(rows) == 12
        assert_turn_order(rows)
        assert sorted(text for _, _, text in rows[2::2]) == [f"m{i} [[slow:0.2]]" for i in range(5)]
        assert await queued_count(state, cid) == 0

        # Behind a running turn, five more sent a moment apart are answered in the order they arrived.
        async def queued(n: int) -> bool:
            return await queued_count(state, cid) == n

        slow = asyncio.create_task(send(a, "first [[slow:1]]"))
        await eventually(lambda: running(state, cid), timeout=5)
        later: list[asyncio.Task[httpx.Response]] = []
        for i in range(5):
            later.append(asyncio.create_task(send((b, a)[i % 2], f"q{i}")))
            await eventually(lambda n=i + 1: queued(n), timeout=5)  # stored: its place in line is taken
        assert (await slow).status_code == 200
        for i, task in enumerate(later):
            r = await task
            assert r.status_code == 200, r.text
            assert r.json()["message"]["content"] == f"echo: q{i}"
        rows = await history(state, cid)
        assert_turn_order(rows)
        assert [text for _, _, text in rows[12::2]] == ["first [[slow:1]]", *(f"q{i}" for i in range(5))]
        # Every history was valid for the model, and the next one is too.
        assert (await b.post("/chat", json={"message": "ok", "conversation_id": cid}, headers=auth)).status_code == 200
        assert llm_server.state.rejections == []


async def test_a_queued_stream_shows_queued_then_its_turn(settings: Settings, llm_server: FakeLLMServer) -> None:
    async with running_app(settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(client, auth)
        slow = asyncio.create_task(
            client.post("/chat", json={"message": "first [[slow:0.5]]", "conversation_id": cid}, headers=auth)
        )
        await eventually(lambda: running(state, cid), timeout=5)
        body: dict[str, Any] = {"message": "next", "conversation_id": cid, "multitask": "enqueue", "stream": True}
        r = await client.post("/chat", json=body, headers=auth)
        assert r.status_code == 200, r.text
        events = sse_events(r.text)
        names = [e["event"] for e in events]
        assert names[:2] == ["queued", "start"], names
        assert names[-1] == "end"
        assert events[0]["data"]["conversation_id"] == cid
        assert "".join(e["data"]["text"] for e in events if e["event"] == "delta") == "echo: next"
        assert (await slow).status_code == 200
        assert_turn_order(await history(state, cid))
        assert llm_server.state.rejections == []


async def test_a_queued_request_whose_client_leaves_still_gets_its_turn(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    # A real server: the clients' disconnects are real.
    async with live_server(create_app(settings)) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        state = live.state
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(client, auth)
        slow = asyncio.create_task(
            client.post("/chat", json={"message": "first [[slow:1]]", "conversation_id": cid}, headers=auth)
        )
        await eventually(lambda: running(state, cid), timeout=5)
        body: dict[str, Any] = {"message": "json", "conversation_id": cid, "multitask": "enqueue"}
        async with httpx.AsyncClient(base_url=live.url, timeout=0.3) as impatient:
            try:
                await impatient.post("/chat", json=body, headers=auth)
                raise AssertionError("answered before the running turn ended")
            except httpx.ReadTimeout:
                pass  # the client gave up and closed its connection
            # A stream whose client leaves after `queued` (on_disconnect "cancel", the default).
            streamed = {**body, "message": "stream", "stream": True}
            async with impatient.stream("POST", "/chat", json=streamed, headers=auth) as r:
                async for chunk in r.aiter_text():
                    assert "event: queued" in chunk
                    break
        assert (await slow).status_code == 200

        async def answered() -> bool:
            rows = await history(state, cid)
            return len(rows) == 8 and rows[-1][1] == "complete"

        await eventually(answered, timeout=10)
        rows = await history(state, cid)
        assert_turn_order(rows)
        assert [text for _, _, text in rows[4::2]] == ["json", "stream"]
        assert await queued_count(state, cid) == 0
        assert llm_server.state.rejections == []


def stored_ago(seconds: float) -> uuid.UUID:
    """A queued id (UUIDv7) as a message stored `seconds` ago gets."""
    ms = int((time.time() - seconds) * 1000)
    return uuid.UUID(int=(ms << 80) | (0x7 << 76) | (0b10 << 62) | uuid.uuid4().int & ((1 << 62) - 1))


async def queue_lost(state: Resources, conversation_id: str, content: str, seconds_ago: float = 60) -> uuid.UUID:
    """A message queued on a replica that stopped before its turn: stored, no run anywhere."""
    async with state.sessions() as session, session.begin():
        conversation = await session.get(Conversation, uuid.UUID(conversation_id))
        assert conversation is not None
        queued_id = stored_ago(seconds_ago)
        session.add(
            QueuedMessage(
                id=queued_id, owner_id=conversation.owner_id, conversation_id=conversation.id, content=content
            )
        )
    return queued_id


async def test_a_queued_message_whose_replica_stopped_is_adopted_and_answered_in_its_place(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    # No sweep during the test: the next message in line finds the orphan and adopts it.
    async with running_app(settings.model_copy(update={"queue_adoption_seconds": 3600})) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(client, auth)
        lost = await queue_lost(state, cid, "lost")
        body = {"message": "now", "conversation_id": cid, "multitask": "enqueue"}
        r = await asyncio.wait_for(client.post("/chat", json=body, headers=auth), timeout=10)
        assert r.status_code == 200, r.text
        assert r.json()["message"]["content"] == "echo: now"
        rows = await history(state, cid)
        assert_turn_order(rows)
        assert [text for _, _, text in rows[::2]] == ["hello", "lost", "now"]  # the orphan kept its place
        assert await queued_count(state, cid) == 0
        # Its run has its queued id: a client can follow it to its end.
        followed = await client.get(f"/runs/{lost}/events", headers=auth)
        events = sse_events(followed.text)
        assert [e["event"] for e in events][:2] == ["queued", "start"]
        assert events[-1]["event"] == "end"
        assert "".join(e["data"]["text"] for e in events if e["event"] == "delta") == "echo: lost"
        assert llm_server.state.rejections == []


async def test_a_live_queued_message_is_never_adopted(settings: Settings, llm_server: FakeLLMServer) -> None:
    short = settings.model_copy(update={"run_lease_seconds": 2.0, "queue_adoption_seconds": 0.1})
    async with running_app(short) as (_, state, client), running_app(short) as (_, other, _b):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(client, auth)
        slow = asyncio.create_task(
            client.post("/chat", json={"message": "first [[slow:3]]", "conversation_id": cid}, headers=auth)
        )
        await eventually(lambda: running(state, cid), timeout=5)
        body = {"message": "waits", "conversation_id": cid, "multitask": "enqueue"}
        queued = asyncio.create_task(client.post("/chat", json=body, headers=auth))

        async def stored() -> bool:
            return await queued_count(state, cid) == 1

        await eventually(stored, timeout=5)
        async with state.sessions() as session:
            (queued_id,) = (await session.execute(select(QueuedMessage.id))).scalars()
        await asyncio.sleep(2.5)  # older than a lease: its age no longer protects it, its run's liveness does
        assert await queued_count(state, cid) == 1  # still waiting behind the slow turn
        for replica in (state, other):  # running here; alive on the other's view (its lease holds)
            assert await queue.stranded(replica, [queued_id]) == []
            assert await TurnService(replica).adopt([queued_id], EVENTS) == []
        assert (await slow).status_code == 200
        r = await queued
        assert r.status_code == 200, r.text
        rows = await history(state, cid)
        assert_turn_order(rows)
        assert [text for _, _, text in rows[::2]] == ["hello", "first [[slow:3]]", "waits"]  # answered once


async def test_the_sweep_costs_one_statement_when_nothing_is_queued(settings: Settings) -> None:
    async with running_app(settings.model_copy(update={"queue_adoption_seconds": 3600})) as (_, state, _client):
        adopted: list[list[uuid.UUID]] = []

        async def adopt(queued: list[uuid.UUID]) -> None:
            adopted.append(queued)

        before = statements_sent(state)
        await queue.sweep(state, adopt)
        assert statements_sent(state) - before == 1
        assert adopted == []


async def test_a_restarted_process_without_redis_adopts_what_it_left(
    tmp_path: Any, settings: Settings, llm_server: FakeLLMServer
) -> None:
    """The embedded default (one process, no Redis): a message queued before a restart is answered by
    the process that comes back (its sweep at start-up): nothing but this process could be running it."""
    lite = await embedded(settings, tmp_path / "restart.db")
    async with running_app(lite) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(client, auth)
        await queue_lost(state, cid, "left behind")
    async with running_app(lite) as (_, state, client):

        async def answered() -> bool:
            rows = await history(state, cid)
            return len(rows) == 4 and rows[-1][1] == "complete"

        await eventually(answered, timeout=10)
        rows = await history(state, cid)
        assert_turn_order(rows)
        assert [text for _, _, text in rows[::2]] == ["hello", "left behind"]
        assert await queued_count(state, cid) == 0


async def test_enqueue_on_the_embedded_default(tmp_path: Any, settings: Settings, llm_server: FakeLLMServer) -> None:
    lite = await embedded(settings, tmp_path / "queue.db")
    async with running_app(lite) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(client, auth)
        slow = asyncio.create_task(
            client.post("/chat", json={"message": "first [[slow:0.5]]", "conversation_id": cid}, headers=auth)
        )
        await eventually(lambda: running(state, cid), timeout=5)
        later = []
        for i in range(2):
            body = {"message": f"q{i}", "conversation_id": cid, "multitask": "enqueue"}
            later.append(asyncio.create_task(client.post("/chat", json=body, headers=auth)))

            async def stored(n: int = i + 1) -> bool:
                return await queued_count(state, cid) == n

            await eventually(stored, timeout=5)
        assert (await slow).status_code == 200
        assert [(await t).json()["message"]["content"] for t in later] == ["echo: q0", "echo: q1"]
        rows = await history(state, cid)
        assert_turn_order(rows)
        assert [text for _, _, text in rows[2::2]] == ["first [[slow:0.5]]", "q0", "q1"]
        assert await queued_count(state, cid) == 0  # removed in the transaction that stored each
        assert llm_server.state.rejections == []


@asynccontextmanager
async def queued_behind_a_failure(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, failure: Exception, message: str
) -> AsyncIterator[tuple[Resources, httpx.AsyncClient, dict[str, str], str, httpx.Response]]:
    """A message queued behind a slow turn whose phase 1 fails once with `failure`: (state, client,
    auth, its conversation, the queued request's response), the slow turn answered."""
    from app.turns import begin

    quick = settings.model_copy(update={"queue_adoption_seconds": 0.2, "run_lease_seconds": 1.0})
    async with running_app(quick) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(client, auth)
        slow = asyncio.create_task(
            client.post("/chat", json={"message": "first [[slow:0.5]]", "conversation_id": cid}, headers=auth)
        )
        await eventually(lambda: running(state, cid), timeout=5)
        real, failed = begin.begin_turn, list[bool]()

        async def failing_once(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("options") is not None and kwargs["options"].dequeue is not None and not failed:
                failed.append(True)
                raise failure
            return await real(*args, **kwargs)

        monkeypatch.setattr("app.turns.start.begin_turn", failing_once)
        body = {"message": message, "conversation_id": cid, "multitask": "enqueue"}
        r = await asyncio.wait_for(client.post("/chat", json=body, headers=auth), timeout=10)
        assert (await slow).status_code == 200
        yield state, client, auth, cid, r


async def test_a_queued_turn_that_cannot_start_for_now_stays_queued_and_is_answered(
    settings: Settings, llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database unavailable just as a queued message's turn starts: its client hears 503
    `stays_queued`, the message is not dropped, and a sweep answers it in its place."""
    from app.core.errors import DatabaseUnavailable

    async with queued_behind_a_failure(settings, monkeypatch, DatabaseUnavailable(), "kept") as (state, _, _, cid, r):
        assert r.status_code == 503, r.text
        assert r.json()["error"]["type"] == "stays_queued"

        async def answered() -> bool:
            rows = await history(state, cid)
            return await queued_count(state, cid) == 0 and len(rows) == 6 and rows[-1][1] == "complete"

        await eventually(answered, timeout=15)
        rows = await history(state, cid)
        assert_turn_order(rows)
        assert [text for _, _, text in rows[::2]] == ["hello", "first [[slow:0.5]]", "kept"]
        assert llm_server.state.rejections == []


async def test_a_queued_turn_that_fails_by_a_bug_leaves_the_queue(
    settings: Settings, llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected error as a queued turn starts is not retried forever (a retry would only repeat
    it, and the messages behind it would wait): its message leaves the queue, the next ones go on."""
    async with queued_behind_a_failure(settings, monkeypatch, RuntimeError("a bug"), "broken") as (
        state,
        client,
        auth,
        cid,
        r,
    ):
        assert r.status_code >= 500
        assert await queued_count(state, cid) == 0
        await asyncio.sleep(1.5)  # past a lease and several sweeps: nothing adopts it again
        later = {"message": "later", "conversation_id": cid, "multitask": "enqueue"}
        r = await asyncio.wait_for(client.post("/chat", json=later, headers=auth), timeout=10)
        assert r.status_code == 200, r.text
        assert [text for _, _, text in (await history(state, cid))[::2]] == ["hello", "first [[slow:0.5]]", "later"]


async def test_two_runs_of_one_queued_message_store_it_once(
    settings: Settings, llm_server: FakeLLMServer, tmp_path: Any
) -> None:
    """Phase 1 stores a queued message only if its row was still queued (the DELETE's result, in the
    same statement on Postgres, the same transaction on SQLite): two runs of it — a replica cut off
    from Redis while another adopted its message — store it once, even at the same moment."""
    for config in (settings, await embedded(settings, tmp_path / "twice.db")):
        await stored_once(config)


async def stored_once(config: Settings) -> None:
    from app.turns.begin import AgentChoice
    from app.turns.store import NotOpened, OpenedTurn, Opening, turn_store

    async with running_app(config) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(client, auth)
        queued_id = await queue_lost(state, cid, "once")
        async with state.sessions() as session:
            conversation = await session.get(Conversation, uuid.UUID(cid))
            assert conversation is not None
        opening = Opening(conversation.owner_id, [{"type": "text", "text": "once"}], None)
        agents = AgentChoice(state.agents, None, None).filter()

        async def store() -> OpenedTurn | NotOpened:
            async with state.db.transactions() as transactions, transactions() as tx:
                return await turn_store(tx).open_existing(
                    opening, conversation_id=conversation.id, agents=agents, dequeue=queued_id
                )

        results = await asyncio.gather(store(), store())
        assert sorted(type(r).__name__ for r in results) == ["NotOpened", "OpenedTurn"]
        assert [r.unqueued for r in results if isinstance(r, NotOpened)] == [True]
        assert [text for _, _, text in (await history(state, cid))].count("once") == 1
        assert await queued_count(state, cid) == 0
