"""The proof: two replicas of the real server (subprocesses on two ports) and nginx in front of
them on loopback, sharing only Postgres and Redis."""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from testkit.fake_llm import FakeLLMServer
from testkit.net import free_port
from testkit.nginx import Prefix, start_nginx
from tests.helpers import eventually, sse_events
from tests.resilience.server import ServerProcess
from tests.resilience.test_faults import key_for

pytestmark = pytest.mark.e2e
LIMIT = 10


class Cluster:
    def __init__(self, a: ServerProcess, b: ServerProcess, lb: str, prefix: Prefix, key: str) -> None:
        self.a, self.b, self.lb, self.prefix = a, b, lb, prefix
        self.headers = {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def cluster(settings: Settings, tmp_path: Path, llm_server: FakeLLMServer) -> AsyncIterator[Cluster]:
    a = ServerProcess(settings, tmp_path / "a.log")
    b = ServerProcess(settings, tmp_path / "b.log")
    env = {"RATE_LIMIT_PER_MINUTE": str(LIMIT), "LLM_READ_TIMEOUT": "10", "TURN_TIMEOUT": "30"}
    try:
        await asyncio.gather(a.start(**env), b.start(**env))
    except BaseException:
        a.kill()
        b.kill()
        raise
    prefix, port = Prefix(tmp_path / "nginx"), free_port()
    try:
        nginx = start_nginx(prefix, port, [a.port, b.port])
    except BaseException:
        # The replicas are ours to stop even when nginx never starts (found: orphaned servers).
        a.kill()
        b.kill()
        raise
    try:
        lb = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient() as http:

            async def up() -> bool:
                try:
                    return (await http.get(f"{lb}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await eventually(up, timeout=10)
        yield Cluster(a, b, lb, prefix, await key_for(settings))
    finally:
        nginx.terminate()
        nginx.wait(10)
        a.kill()
        b.kill()


async def test_replicas_behind_nginx_act_as_one(cluster: Cluster, llm_server: FakeLLMServer) -> None:
    a, b, headers = cluster.a, cluster.b, cluster.headers
    async with httpx.AsyncClient(timeout=30) as http:
        # 1. A colliding turn on the other replica gets 409.
        cid = (await http.post(f"{a.url}/chat", json={"message": "hi"}, headers=headers)).json()["conversation_id"]
        calls_before = llm_server.state.request_count
        slow = asyncio.create_task(
            http.post(
                f"{a.url}/chat", headers=headers, json={"message": "[[delay_first:1]] slow", "conversation_id": cid}
            )
        )
        await eventually(lambda: llm_server.state.request_count >= calls_before + 1)
        busy = await http.post(f"{b.url}/chat", json={"message": "me too", "conversation_id": cid}, headers=headers)
        assert busy.status_code == 409
        assert busy.json()["error"]["type"] == "conversation_busy"
        assert (await slow).status_code == 200

        # 2. A retry with the same Idempotency-Key on the other replica: same answer, no second model call.
        body, idem = {"message": "[[words:5]] once"}, {**headers, "Idempotency-Key": "proof-1"}
        first = await http.post(f"{a.url}/chat", json=body, headers=idem)
        calls = len(llm_server.state.request_bodies())
        retry = await http.post(f"{b.url}/chat", json=body, headers=idem)
        assert retry.json() == first.json()
        assert len(llm_server.state.request_bodies()) == calls

        # 3. A stream dropped on one replica is resumed on the other: nothing missed or repeated.
        seen = ""
        stream_body = {"message": "[[words:30]] [[slow:0.03]]", "stream": True, "on_disconnect": "continue"}
        async with http.stream("POST", f"{a.url}/chat", json=stream_body, headers=headers) as r:
            async for chunk in r.aiter_text():
                seen += chunk
                if seen.count("event: delta") >= 4:
                    break
        first_part = sse_events(seen.rsplit("\n\n", 1)[0] + "\n\n")
        run_id = first_part[0]["data"]["run_id"]
        rest = sse_events(
            (
                await http.get(
                    f"{b.url}/runs/{run_id}/events", headers={**headers, "Last-Event-ID": first_part[-1]["id"]}
                )
            ).text
        )
        ids = [int(e["id"]) for e in first_part + rest]
        assert ids == list(range(1, len(ids) + 1))
        assert rest[-1]["event"] == "end"

        # 4. A run cancelled from the other replica stops.
        events = ""
        async with http.stream(
            "POST", f"{a.url}/chat", headers=headers, json={"message": "[[words:500]] [[slow:0.03]]", "stream": True}
        ) as r:
            async for chunk in r.aiter_text():
                events += chunk
                if "event: delta" in events and "run_id" in events and "#sent" not in events:
                    rid = sse_events(events.split("\n\n")[0] + "\n\n")[0]["data"]["run_id"]
                    assert (await http.post(f"{b.url}/runs/{rid}/cancel", headers=headers)).status_code == 202
                    events += "#sent"
        assert sse_events(events.replace("#sent", ""))[-1]["data"]["error"]["type"] == "cancelled"
        await eventually(lambda: llm_server.state.open_streams == 0, timeout=1.0)

    # 5. Through nginx, a per-key limit of N admits exactly N across both replicas.
    if time.time() % 60 > 50:  # one fixed window for the whole burst
        await asyncio.sleep(61 - time.time() % 60)
    fresh = {"Authorization": f"Bearer {await key_for(a.settings)}"}
    async with httpx.AsyncClient(timeout=30) as http:
        burst = await asyncio.gather(
            *(http.get(f"{cluster.lb}/conversations", headers=fresh) for _ in range(3 * LIMIT))
        )
    assert Counter(r.status_code for r in burst) == {200: LIMIT, 429: 2 * LIMIT}
    assert all("x-request-id" in r.headers for r in burst)
    # Both replicas served part of the burst (the balancer's access log names the upstream).
    log = cluster.prefix.access_log.read_text()
    served_by = Counter(re.findall(r"127\.0\.0\.1:(\d+)", log))
    assert served_by[str(a.port)] > 0
    assert served_by[str(b.port)] > 0
    assert (await a.terminate()) == 0
    assert (await b.terminate()) == 0
    assert a.log_problems() == []
    assert b.log_problems() == []
