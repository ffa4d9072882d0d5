"""A second message while a turn runs: `multitask: "interrupt"` stops the running turn wherever it runs
(a JSON turn or a stream, on this replica or another), keeps its partial answer (`incomplete`,
stop_reason `interrupted`), then runs; the default still refuses with 409."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from sqlalchemy import select

from app.core.config import Settings
from app.main import create_app
from app.models import Message
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.helpers import eventually, live_server, sse_events


async def answers(state: Resources, conversation_id: str) -> list[Message]:
    async with state.sessions() as session:
        query = (
            select(Message)
            .where(Message.conversation_id == uuid.UUID(conversation_id), Message.role == "assistant")
            .order_by(Message.id)
        )
        return list((await session.execute(query)).scalars())


async def running(state: Resources, conversation_id: str) -> bool:
    return any(m.status == "in_progress" for m in await answers(state, conversation_id))


async def opened(client: httpx.AsyncClient, auth: dict[str, str]) -> str:
    r = await client.post("/chat", json={"message": "hello"}, headers=auth)
    assert r.status_code == 200, r.text
    cid: str = r.json()["conversation_id"]
    return cid


async def test_interrupt_stops_a_json_turn_on_another_replica_and_runs(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    async with running_app(settings) as (_, state, a), running_app(settings) as (_, _other, b):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(a, auth)
        slow = asyncio.create_task(
            a.post("/chat", json={"message": "think hard [[slow:20]]", "conversation_id": cid}, headers=auth)
        )
        await eventually(lambda: running(state, cid), timeout=5)
        body: dict[str, Any] = {"message": "never mind", "conversation_id": cid}
        refused = await b.post("/chat", json=body, headers=auth)
        assert refused.status_code == 409  # the default: reject

        took = await b.post("/chat", json={**body, "multitask": "interrupt"}, headers=auth)
        assert took.status_code == 200, took.text
        assert took.json()["stop_reason"] == "end_turn"
        first = await asyncio.wait_for(slow, timeout=5)  # long before its model would have answered
        assert first.status_code == 200, first.text
        assert (first.json()["message"]["status"], first.json()["stop_reason"]) == ("incomplete", "interrupted")

        rows = await answers(state, cid)
        assert [(m.status, m.stop_reason) for m in rows] == [
            ("complete", "end_turn"),
            ("incomplete", "interrupted"),
            ("complete", "end_turn"),
        ]
        # The next turn's history (the interrupted one in it) is valid for the model.
        assert (await a.post("/chat", json={"message": "ok", "conversation_id": cid}, headers=auth)).status_code == 200
        assert llm_server.state.rejections == []


async def test_interrupt_stops_a_stream_on_another_replica_keeping_its_partial_answer(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    # A real server for the stream (ASGITransport would hand over the body only once it is complete).
    async with (
        live_server(create_app(settings)) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as a,
        running_app(settings) as (_, _other, b),
    ):
        state = live.state
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(a, auth)
        streamed = {
            "message": "[[words:200]] [[slow:0.05]]",
            "conversation_id": cid,
            "stream": True,
            "on_disconnect": "continue",
        }
        seen: list[str] = []

        async def follow() -> None:
            async with a.stream("POST", "/chat", json=streamed, headers=auth) as r:
                async for chunk in r.aiter_text():
                    seen.append(chunk)

        task = asyncio.create_task(follow())
        await eventually(lambda: "".join(seen).count("event: delta") >= 3, timeout=5)
        took = await b.post(
            "/chat", json={"message": "stop", "conversation_id": cid, "multitask": "interrupt"}, headers=auth
        )
        assert took.status_code == 200, took.text
        await asyncio.wait_for(task, timeout=5)
        events = sse_events("".join(seen))
        assert events[-1]["event"] == "end"
        assert events[-1]["data"]["stop_reason"] == "interrupted"

        interrupted = (await answers(state, cid))[1]
        assert (interrupted.status, interrupted.stop_reason) == ("incomplete", "interrupted")
        assert interrupted.content[0]["text"].startswith("word1 word2 word3")
        assert "word200" not in interrupted.content[0]["text"]
        assert llm_server.state.rejections == []


async def test_interrupt_on_an_idle_conversation_just_runs(settings: Settings, llm_server: FakeLLMServer) -> None:
    async with running_app(settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = await opened(client, auth)
        r = await client.post(
            "/chat", json={"message": "again", "conversation_id": cid, "multitask": "interrupt"}, headers=auth
        )
        assert r.status_code == 200, r.text
        bad = await client.post(
            "/chat", json={"message": "x", "conversation_id": cid, "multitask": "sometimes"}, headers=auth
        )
        assert bad.status_code == 422
