"""Guarantees that must hold across replicas: one turn at a time, idempotency, exact limits,
resumable streams, cancel from anywhere."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from redis.asyncio import Redis

from app.core.config import Settings
from app.core.locks import Lock, LockManager, RedisLocks
from testkit.fake_llm import FakeLLMServer
from tests.helpers import Live, eventually, sse_events


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def post(live: Live, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        return await http.post("/chat", json=body, headers={**auth(key), **headers})


async def test_a_colliding_turn_on_another_replica_is_409(
    replicas: tuple[Live, Live], owner_key: str, llm_server: FakeLLMServer
) -> None:
    a, b = replicas
    cid = (await post(a, owner_key, {"message": "start"})).json()["conversation_id"]
    calls_before = llm_server.state.request_count
    slow = asyncio.create_task(post(a, owner_key, {"message": "[[delay_first:1]] slow", "conversation_id": cid}))
    await eventually(lambda: llm_server.state.request_count >= calls_before + 1)
    busy = await post(b, owner_key, {"message": "me too", "conversation_id": cid})
    assert busy.status_code == 409
    assert busy.json()["error"]["type"] == "conversation_busy"
    assert (await slow).status_code == 200
    # Released when the turn ends: the other replica gets its turn.
    assert (await post(b, owner_key, {"message": "now?", "conversation_id": cid})).status_code == 200
    items = await httpx.AsyncClient(base_url=b.url).get(f"/conversations/{cid}/messages", headers=auth(owner_key))
    assert [i["content"] for i in items.json()["items"] if i["role"] == "user"] == [
        "start",
        "[[delay_first:1]] slow",
        "now?",
    ]  # the refused turn stored nothing


async def test_a_crashed_holder_does_not_wedge_a_conversation(redis_client: Redis, settings: Settings) -> None:
    locks = RedisLocks(redis_client, settings.redis_key_prefix, ttl=0.3)
    held = await locks.acquire("conversation:x")
    assert held is not None
    assert await locks.acquire("conversation:x") is None
    # The holder "crashes": nobody renews. The TTL frees the lock.
    await asyncio.sleep(0.4)
    again = await locks.acquire("conversation:x")
    assert again is not None
    # The old holder cannot renew or release what is no longer its own.
    assert not await locks.renew(held)
    await locks.release(held)
    assert await locks.acquire("conversation:x") is None


async def test_idempotent_retry_on_another_replica(
    replicas: tuple[Live, Live], owner_key: str, llm_server: FakeLLMServer
) -> None:
    a, b = replicas
    body = {"message": "charge it once [[words:3]]"}
    first = await post(a, owner_key, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == 200
    calls = len(llm_server.state.request_bodies())
    retry = await post(b, owner_key, body, **{"Idempotency-Key": "k-1"})
    assert retry.status_code == 200
    assert retry.json() == first.json()
    assert len(llm_server.state.request_bodies()) == calls  # no second model call
    # The same key with another body is refused.
    other = await post(b, owner_key, {"message": "something else"}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422
    assert other.json()["error"]["type"] == "idempotency_key_reused"
    # A streamed retry replays the stored answer as a stream.
    streamed = await post(a, owner_key, {**body, "stream": True}, **{"Idempotency-Key": "k-s"})
    replay = await post(b, owner_key, {**body, "stream": True}, **{"Idempotency-Key": "k-s"})
    text = "".join(e["data"]["text"] for e in sse_events(streamed.text) if e["event"] == "delta")
    assert [e["data"]["text"] for e in sse_events(replay.text) if e["event"] == "delta"] == [text]


async def test_idempotent_retry_while_running_and_after_failure(
    replicas: tuple[Live, Live], owner_key: str, llm_server: FakeLLMServer
) -> None:
    a, b = replicas
    body = {"message": "[[delay_first:1]] slow"}
    calls_before = llm_server.state.request_count
    first = asyncio.create_task(post(a, owner_key, body, **{"Idempotency-Key": "k-2"}))
    await eventually(lambda: llm_server.state.request_count >= calls_before + 1)
    running = await post(b, owner_key, body, **{"Idempotency-Key": "k-2"})
    assert running.status_code == 409
    assert running.json()["error"]["type"] == "idempotency_in_progress"
    assert (await first).status_code == 200
    failing = {"message": "[[fail_first:1:500]] once"}
    assert (await post(a, owner_key, failing, **{"Idempotency-Key": "k-3"})).status_code == 502
    # Failures are not stored: the retry runs the turn again, and succeeds.
    assert (await post(b, owner_key, failing, **{"Idempotency-Key": "k-3"})).status_code == 200


async def test_stream_resumes_on_the_other_replica_with_nothing_missed(
    replicas: tuple[Live, Live], owner_key: str, llm_server: FakeLLMServer
) -> None:
    a, b = replicas
    body = {"message": "[[words:40]] [[slow:0.03]]", "stream": True, "on_disconnect": "continue"}
    seen = ""
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as http:
        async with http.stream("POST", "/chat", json=body, headers=auth(owner_key)) as r:
            async for chunk in r.aiter_text():
                seen += chunk
                if seen.count("event: delta") >= 5:
                    break  # the connection drops
    first = sse_events(seen.rsplit("\n\n", 1)[0] + "\n\n")
    run_id, last = first[0]["data"]["run_id"], first[-1]["id"]
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as http:
        r = await http.get(f"/runs/{run_id}/events", headers={**auth(owner_key), "Last-Event-ID": last})
    rest = sse_events(r.text)
    ids = [int(e["id"]) for e in first + rest]
    assert ids == list(range(1, len(ids) + 1))  # none missed, none repeated
    assert rest[-1]["event"] == "end"
    text = "".join(e["data"]["text"] for e in first + rest if e["event"] == "delta")
    assert text == " ".join(f"word{n}" for n in range(1, 41))
    # A full replay from the start works too, and another owner sees nothing.
    async with httpx.AsyncClient(base_url=b.url, timeout=30) as http:
        whole = sse_events((await http.get(f"/runs/{run_id}/events", headers=auth(owner_key))).text)
        assert [e["event"] for e in whole][0] == "start"
        assert len(whole) == len(ids)
        from tests.fixtures.app import make_key

        stranger = await make_key(b.state, "stranger")
        assert (await http.get(f"/runs/{run_id}/events", headers=auth(stranger))).status_code == 404


async def test_cancel_from_the_other_replica_stops_the_run(
    replicas: tuple[Live, Live], owner_key: str, llm_server: FakeLLMServer
) -> None:
    a, b = replicas
    body = {"message": "[[words:500]] [[slow:0.03]]", "stream": True}
    seen = ""
    async with httpx.AsyncClient(timeout=30) as http:
        async with http.stream("POST", f"{a.url}/chat", json=body, headers=auth(owner_key)) as r:
            async for chunk in r.aiter_text():
                seen += chunk
                if "event: delta" in seen and "cancel_sent" not in seen:
                    run_id = sse_events(seen.split("\n\n")[0] + "\n\n")[0]["data"]["run_id"]
                    cancelled = await http.post(f"{b.url}/runs/{run_id}/cancel", headers=auth(owner_key))
                    assert cancelled.status_code == 202
                    seen += "cancel_sent"
    events = sse_events(seen.replace("cancel_sent", ""))
    assert events[-1]["event"] == "error"
    assert events[-1]["data"]["error"]["type"] == "cancelled"
    await eventually(lambda: llm_server.state.open_streams == 0, timeout=1.0)
    async with httpx.AsyncClient(base_url=b.url) as http:
        cid = events[0]["data"]["conversation_id"]
        items = (await http.get(f"/conversations/{cid}/messages", headers=auth(owner_key))).json()["items"]
        assert items[1]["status"] == "incomplete"
        again = await http.post(f"/runs/{run_id}/cancel", headers=auth(owner_key))
        assert again.status_code == 409


class SlowRelease:
    """A lock manager whose release takes a while, like Redis on a bad day."""

    def __init__(self, inner: LockManager) -> None:
        self.inner, self.ttl = inner, inner.ttl

    async def acquire(self, name: str) -> Lock | None:
        return await self.inner.acquire(name)

    async def renew(self, lock: Lock) -> bool:
        return await self.inner.renew(lock)

    async def release(self, lock: Lock) -> None:
        await asyncio.sleep(0.3)
        await self.inner.release(lock)


async def test_the_next_turn_can_follow_at_once(replicas: tuple[Live, Live], owner_key: str) -> None:
    """The conversation is freed before the client hears `end` (or gets its answer), not after."""
    a, b = replicas
    a.swap(locks=SlowRelease(a.state.locks))
    cid = (await post(a, owner_key, {"message": "first"})).json()["conversation_id"]
    for n in range(3):
        streamed = await post(a, owner_key, {"message": f"s{n}", "conversation_id": cid, "stream": True})
        assert sse_events(streamed.text)[-1]["event"] == "end"
        answered = await post(b, owner_key, {"message": f"j{n}", "conversation_id": cid})
        assert answered.status_code == 200, answered.text
        json_turn = await post(a, owner_key, {"message": f"k{n}", "conversation_id": cid})
        assert json_turn.status_code == 200, json_turn.text
        assert (await post(b, owner_key, {"message": f"m{n}", "conversation_id": cid})).status_code == 200
