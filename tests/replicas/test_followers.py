"""Followers of a run on another replica (GET /runs/{id}/events through Redis): they outlast a quiet
run, they wait on a pool of their own (so they never starve locks and limits), and a key may hold
only so many of them."""

from __future__ import annotations

import asyncio
import json
import uuid
from contextlib import AsyncExitStack
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel

from app.agent.tools.base import Tool, ToolContext
from app.core.config import Settings
from app.core.errors import ServiceBusy
from app.main import create_app
from app.runs.errors import TooManyFollowers
from app.runs.followers import Followers
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live, eventually, live_server, sse_events


class Nap(BaseModel):
    seconds: float


async def _nap(data: Nap, _: ToolContext) -> str:
    await anyio.sleep(data.seconds)
    return "rested"


NAP = Tool("nap", "Takes its time, as a slow tool does.", Nap, _nap)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Stream:
    """An SSE response read in the background, its events kept as they arrive."""

    def __init__(self, http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> None:
        self.raw, self.status = "", 0
        self.started = asyncio.Event()
        self.task = asyncio.create_task(self._read(http, method, url, kwargs))

    async def _read(self, http: httpx.AsyncClient, method: str, url: str, kwargs: dict[str, Any]) -> None:
        async with http.stream(method, url, **kwargs) as r:
            self.status = r.status_code
            async for chunk in r.aiter_text():
                self.raw += chunk
                if "event: start" in self.raw:
                    self.started.set()

    @property
    def events(self) -> list[dict[str, Any]]:
        return sse_events(self.raw)

    async def done(self, within: float) -> list[dict[str, Any]]:
        await asyncio.wait_for(self.task, within)
        return self.events


async def start_run(http: httpx.AsyncClient, live: Live, key: str, message: str) -> tuple[Stream, str]:
    own = Stream(http, "POST", f"{live.url}/chat", json={"message": message, "stream": True}, headers=auth(key))
    await asyncio.wait_for(own.started.wait(), 5)
    return own, own.events[0]["data"]["run_id"]


@pytest.fixture
def slow_tool_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"llm_read_timeout": 10.0, "turn_timeout": 14.0})


async def test_a_follower_on_another_replica_outlasts_a_7_second_pause(
    slow_tool_settings: Settings, llm_server: FakeLLMServer
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(live_server(create_app(slow_tool_settings, extra_tools=[NAP])))
        b = await stack.enter_async_context(live_server(create_app(slow_tool_settings, extra_tools=[NAP])))
        key = await make_key(a.state)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        # Text, the tool call, then 7 s of silence while the tool works, then the rest of the answer.
        own, run_id = await start_run(http, a, key, '[[tool:nap {"seconds": 7}]] take your time')
        follower = Stream(http, "GET", f"{b.url}/runs/{run_id}/events", headers=auth(key))
        followed = await follower.done(within=14)
        assert follower.status == 200
        assert followed[-1]["event"] == "end", followed[-1]  # not `unavailable` after 5 s of quiet
        assert followed == await own.done(within=5)  # every event, in order, the same as the run's own stream
        assert [e["event"] for e in followed][:4] == ["start", "delta", "delta", "delta"]
        assert "tool_result" in [e["event"] for e in followed]


@pytest.fixture
def small_main_pool(settings: Settings) -> Settings:
    # A main pool smaller than the crowd of followers: were they on it, nothing else would get a connection.
    return settings.model_copy(update={"redis_max_connections": 10, "run_max_followers_per_key": 40})


async def test_idle_followers_do_not_starve_the_main_pool(
    small_main_pool: Settings, llm_server: FakeLLMServer, capsys: pytest.CaptureFixture[str]
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(live_server(create_app(small_main_pool, extra_tools=[NAP])))
        b = await stack.enter_async_context(live_server(create_app(small_main_pool, extra_tools=[NAP])))
        key = await make_key(a.state)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)))
        own, run_id = await start_run(http, a, key, '[[tool:nap {"seconds": 30}]] a long quiet run')
        followers = [Stream(http, "GET", f"{b.url}/runs/{run_id}/events", headers=auth(key)) for _ in range(30)]
        await asyncio.wait_for(asyncio.gather(*(f.started.wait() for f in followers)), 10)
        await eventually(lambda: b.state.followers.remote == 30)
        capsys.readouterr()

        # On the followers' replica, a turn still takes its conversation's lock, at once.
        cid = (await http.post(f"{b.url}/chat", json={"message": "hi"}, headers=auth(key))).json()["conversation_id"]
        calls = llm_server.state.request_count
        body = {"message": "[[delay_first:1]] slow", "conversation_id": cid}
        slow = asyncio.create_task(http.post(f"{b.url}/chat", json=body, headers=auth(key)))
        await eventually(lambda: llm_server.state.request_count > calls)
        busy = await http.post(f"{b.url}/chat", json={**body, "message": "me too"}, headers=auth(key))
        assert busy.status_code == 409, busy.text
        assert (await slow).status_code == 200
        assert (await http.get(f"{b.url}/readyz")).status_code == 200
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        assert not [e for e in lines if e["event"] in ("chat.degraded", "limits.unavailable", "run.follow_failed")]

        # Every follower is still there, and hears the end.
        assert (await http.post(f"{a.url}/runs/{run_id}/cancel", headers=auth(key))).status_code == 202
        for follower in followers:
            events = await follower.done(within=10)
            assert events[-1]["event"] == "error"
            assert events[-1]["data"]["error"]["type"] == "cancelled"
        await own.done(within=5)
        await eventually(lambda: b.state.followers.remote == 0)


@pytest.fixture
def two_per_key(settings: Settings) -> Settings:
    return settings.model_copy(update={"run_max_followers_per_key": 2})


async def test_a_key_may_follow_only_so_many_runs_at_once(two_per_key: Settings, llm_server: FakeLLMServer) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(live_server(create_app(two_per_key, extra_tools=[NAP])))
        b = await stack.enter_async_context(live_server(create_app(two_per_key, extra_tools=[NAP])))
        key = await make_key(a.state)
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        own, run_id = await start_run(http, a, key, '[[tool:nap {"seconds": 30}]] quiet')
        url = f"{b.url}/runs/{run_id}/events"
        first, second = (Stream(http, "GET", url, headers=auth(key)) for _ in range(2))
        await asyncio.wait_for(asyncio.gather(first.started.wait(), second.started.wait()), 5)

        refused = await http.get(url, headers=auth(key))
        assert refused.status_code == 429
        assert refused.json()["error"]["type"] == "too_many_followers"
        assert int(refused.headers["retry-after"]) > 0
        # Per replica, where the connections are: the run's own replica still serves this key.
        local = Stream(http, "GET", f"{a.url}/runs/{run_id}/events", headers=auth(key))
        await asyncio.wait_for(local.started.wait(), 5)

        first.task.cancel()  # one follower leaves: its place is free again
        await eventually(lambda: sum(b.state.followers.by_key.values()) < 2)
        third = Stream(http, "GET", url, headers=auth(key))
        await asyncio.wait_for(third.started.wait(), 5)
        assert third.status == 200
        await http.post(f"{a.url}/runs/{run_id}/cancel", headers=auth(key))
        for stream in (second, third, local, own):
            await stream.done(within=10)


def test_the_follower_caps_count_per_key_and_in_all_and_free_on_release() -> None:
    followers = Followers(per_key=2, remote=3)
    one, two = uuid.uuid4(), uuid.uuid4()
    tickets = [followers.admit(one, remote=True), followers.admit(one, remote=False)]
    with pytest.raises(TooManyFollowers):
        followers.admit(one, remote=False)
    tickets += [followers.admit(two, remote=True), followers.admit(two, remote=True)]
    assert followers.remote == 3
    with pytest.raises(TooManyFollowers):
        followers.admit(two, remote=False)
    tickets[0].release()
    tickets[0].release()  # once only
    assert followers.remote == 2
    tickets.append(followers.admit(one, remote=True))
    with pytest.raises(ServiceBusy):  # the followers' pool is full, whoever asks
        followers.admit(uuid.uuid4(), remote=True)
    for ticket in tickets:
        ticket.release()
    assert followers.remote == 0
    assert not followers.by_key
