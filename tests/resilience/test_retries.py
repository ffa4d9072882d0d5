"""One retry layer (the SDK's, configured): before the first token only, with backoff."""

from __future__ import annotations

from app.core.config import Settings
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.helpers import sse_events


async def test_transient_upstream_errors_are_retried_before_the_first_token(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    async with running_app(settings.model_copy(update={"llm_max_retries": 2})) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        for code in (429, 529, 500):
            llm_server.reset()
            r = await client.post("/chat", json={"message": f"[[fail_first:2:{code}]] hi"}, headers=auth)
            assert r.status_code == 200, (code, r.text)
            assert len(llm_server.state.request_bodies()) == 3
        llm_server.reset()
        r = await client.post("/chat", json={"message": "[[fail_first:3:529]] hi"}, headers=auth)
        assert r.status_code == 503  # retries exhausted: the mapped error, with Retry-After
        assert "retry-after" in r.headers


async def test_no_retry_once_text_has_streamed(settings: Settings, llm_server: FakeLLMServer) -> None:
    async with running_app(settings.model_copy(update={"llm_max_retries": 2})) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        r = await client.post("/chat", json={"message": "x [[midstream_error]]", "stream": True}, headers=auth)
    events = sse_events(r.text)
    assert events[-1]["event"] == "error"
    assert [e["event"] for e in events].count("delta") >= 1
    assert len(llm_server.state.request_bodies()) == 1


async def test_hung_upstream_fails_at_the_deadline_not_after_retries(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    quick = settings.model_copy(update={"llm_max_retries": 3, "llm_read_timeout": 5.0, "turn_timeout": 0.8})
    async with running_app(quick) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        r = await client.post("/chat", json={"message": "[[hang]]"}, headers=auth)
    assert r.status_code == 504
    assert len(llm_server.state.request_bodies()) == 1
