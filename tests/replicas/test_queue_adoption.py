"""A queued message whose replica stops before its turn is adopted by another replica and answered,
once, in its place in line (app/turns/queue.py)."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
from sqlalchemy import select

from app.chat.router import EVENTS
from app.core.config import Settings
from app.main import create_app
from app.models import Message, QueuedMessage
from app.turns import queue
from app.turns.start import TurnService
from testkit.fake_llm import FakeLLMServer
from tests.files import samples
from tests.files.test_attachments import user_blocks
from tests.fixtures.app import make_key
from tests.helpers import eventually, live_server, sse_events
from tests.resilience.server import ServerProcess
from tests.turns.test_enqueue import assert_turn_order, history, queue_lost, queued_count, running

LEASE = 2.0


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_killed_replicas_queued_message_is_answered_by_another_in_its_place(
    settings: Settings, tmp_path: Path, llm_server: FakeLLMServer
) -> None:
    settings = settings.model_copy(update={"run_lease_seconds": LEASE, "queue_adoption_seconds": 0.3})
    doomed = ServerProcess(settings, tmp_path / "doomed.log")
    await doomed.start(RUN_LEASE_SECONDS=str(LEASE), QUEUE_ADOPTION_SECONDS="0.3", LLM_READ_TIMEOUT="30")
    try:
        async with live_server(create_app(settings)) as survivor, httpx.AsyncClient(timeout=30) as http:
            state, key = survivor.state, await make_key(survivor.state)
            first = await http.post(f"{survivor.url}/chat", json={"message": "hello"}, headers=auth(key))
            cid = first.json()["conversation_id"]

            def send(text: str, **extra: object) -> dict[str, object]:
                return {"message": text, "conversation_id": cid, **extra}

            slow = asyncio.create_task(
                http.post(f"{survivor.url}/chat", json=send("first [[slow:2]]"), headers=auth(key))
            )
            await eventually(lambda: running(state, cid), timeout=5)
            # Queued on the doomed replica behind the slow turn (its client leaves after `queued`)…
            body = send("orphan", multitask="enqueue", stream=True)
            async with http.stream("POST", f"{doomed.url}/chat", json=body, headers=auth(key)) as r:
                async for chunk in r.aiter_text():
                    queued_id = sse_events(chunk)[0]["data"]["queued_id"]
                    break
            # …and one more on the survivor, behind it: it must not overtake the orphan.
            after = asyncio.create_task(
                http.post(f"{survivor.url}/chat", json=send("after", multitask="enqueue"), headers=auth(key))
            )

            async def both_queued() -> bool:
                return await queued_count(state, cid) == 2

            await eventually(both_queued, timeout=5)
            doomed.kill()  # SIGKILL: its queued run dies with it

            assert (await slow).status_code == 200
            r = await asyncio.wait_for(after, timeout=LEASE * 6)
            assert r.status_code == 200, r.text
            assert r.json()["message"]["content"] == "echo: after"
            rows = await history(state, cid)
            assert_turn_order(rows)
            assert [text for _, _, text in rows[::2]] == ["hello", "first [[slow:2]]", "orphan", "after"]
            assert await queued_count(state, cid) == 0

            # The adopted run kept the queued id: its events can be followed to the answer.
            followed = await http.get(f"{survivor.url}/runs/{queued_id}/events", headers=auth(key))
            events = sse_events(followed.text)
            assert [e["event"] for e in events][:2] == ["queued", "start"], events
            assert events[-1]["event"] == "end"
            assert "".join(e["data"]["text"] for e in events if e["event"] == "delta") == "echo: orphan"
            await asyncio.sleep(1.0)  # a few more sweeps: nothing answers it again
            assert len(await history(state, cid)) == 8
            assert llm_server.state.rejections == []
    finally:
        doomed.kill()


async def test_a_drained_replicas_queued_message_is_answered_by_another(
    settings: Settings, tmp_path: Path, llm_server: FakeLLMServer
) -> None:
    settings = settings.model_copy(update={"run_lease_seconds": LEASE, "queue_adoption_seconds": 0.3})
    draining = ServerProcess(settings, tmp_path / "draining.log")
    await draining.start(RUN_LEASE_SECONDS=str(LEASE), QUEUE_ADOPTION_SECONDS="0.3", SHUTDOWN_GRACE_SECONDS="1")
    try:
        async with live_server(create_app(settings)) as survivor, httpx.AsyncClient(timeout=30) as http:
            state, key = survivor.state, await make_key(survivor.state)
            first = await http.post(f"{survivor.url}/chat", json={"message": "hello"}, headers=auth(key))
            cid = first.json()["conversation_id"]
            body = {"message": "first [[slow:2]]", "conversation_id": cid}
            slow = asyncio.create_task(http.post(f"{survivor.url}/chat", json=body, headers=auth(key)))
            await eventually(lambda: running(state, cid), timeout=5)
            # With an attachment: the replica that adopts the message sends it as the client did.
            image = samples.png(64, 48)
            uploaded = await http.post(f"{survivor.url}/files", files={"file": ("i.png", image)}, headers=auth(key))
            file_id = uploaded.json()["id"]
            body = {"message": "drained", "conversation_id": cid, "multitask": "enqueue", "attachments": [file_id]}
            queued = asyncio.create_task(http.post(f"{draining.url}/chat", json=body, headers=auth(key)))

            async def stored() -> bool:
                return await queued_count(state, cid) == 1

            await eventually(stored, timeout=5)
            assert await draining.terminate() == 0  # SIGTERM: a drain, its turn not come within the grace
            r = await queued
            assert r.status_code == 503, r.text
            assert r.json()["error"]["type"] == "stays_queued"  # told the truth: it stays queued

            assert (await slow).status_code == 200

            async def answered() -> bool:
                rows = await history(state, cid)
                return len(rows) == 6 and rows[-1][1] == "complete"

            await eventually(answered, timeout=LEASE * 6)
            rows = await history(state, cid)
            assert_turn_order(rows)
            assert [text for _, _, text in rows[::2]] == ["hello", "first [[slow:2]]", "drained"]
            assert await queued_count(state, cid) == 0
            async with state.sessions() as session:
                query = select(Message.content).where(Message.conversation_id == uuid.UUID(cid), Message.role == "user")
                contents = (await session.execute(query.order_by(Message.id))).scalars().all()
            assert [(b["type"], b.get("file_id"), b.get("text")) for b in contents[-1]] == [
                ("attachment", file_id, None),
                ("text", None, "drained"),
            ]
            [adopted] = [b for b in llm_server.state.request_bodies() if "drained" in json.dumps(b["messages"][-1])]
            sent = user_blocks(adopted)
            assert [b["type"] for b in sent] == ["image", "text"]
            assert sent[0]["source"]["data"] == base64.b64encode(image).decode()
            assert draining.log_problems() == []
    finally:
        draining.kill()


async def test_replicas_racing_to_adopt_answer_once(settings: Settings, llm_server: FakeLLMServer) -> None:
    # Their own sweeps idle (after the first pass): the test races the adoptions itself.
    racing = settings.model_copy(update={"queue_adoption_seconds": 3600})
    async with live_server(create_app(racing)) as a, live_server(create_app(racing)) as b:
        key = await make_key(a.state)
        async with httpx.AsyncClient(timeout=30) as http:
            cids = []
            for _ in range(2):
                r = await http.post(f"{a.url}/chat", json={"message": "hello"}, headers=auth(key))
                cids.append(r.json()["conversation_id"])
        # Left by replicas that died: one adopted by both at once, one by both's sweeps (every 20 ms).
        direct = await queue_lost(a.state, cids[0], "direct")
        adopted = await asyncio.gather(
            TurnService(a.state).adopt([direct], EVENTS), TurnService(b.state).adopt([direct], EVENTS)
        )
        assert sorted(len(found) for found in adopted) == [0, 1]
        swept = await queue_lost(a.state, cids[1], "swept")
        async with AsyncExitStack() as sweeps:
            for replica in (a.state, b.state):
                service = TurnService(replica)
                await sweeps.enter_async_context(
                    queue.adoption_sweeps(replica, functools.partial(service.adopt, publisher=EVENTS), 0.02)
                )

            async def answered() -> bool:
                rows = [await history(a.state, cid) for cid in cids]
                return [(len(r), r[-1][1]) for r in rows] == [(4, "complete")] * 2

            await eventually(answered, timeout=20)
            await asyncio.sleep(0.5)  # many more sweeps on each
        for cid, text in zip(cids, ("direct", "swept"), strict=True):
            rows = await history(a.state, cid)
            assert [t for _, _, t in rows[::2]] == ["hello", text]  # answered once
            assert_turn_order(rows)
        for queued_id in (direct, swept):  # one run of it, on one replica
            assert (queued_id in a.state.runs.runs) != (queued_id in b.state.runs.runs)
        async with a.state.sessions() as session:
            assert (await session.execute(select(QueuedMessage.id))).first() is None
