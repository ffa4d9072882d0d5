"""Errors under /v1 are OpenAI's (so the SDK raises its classes); /chat keeps its envelope; a client
that leaves a stream cancels the upstream call and its partial answer is recorded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from openai import (
    APIError,
    AsyncOpenAI,
    AuthenticationError,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
)

from app.core.config import Settings
from app.main import create_app
from app.models import Message
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live, eventually, live_server
from tests.openai.conftest import message_id, sdk

HI = [{"role": "user", "content": "hi"}]


async def test_authentication(live: Live) -> None:
    async with sdk(live, "ak_not-a-key") as wrong:
        with pytest.raises(AuthenticationError) as caught:
            await wrong.chat.completions.create(model="agentchat", messages=HI)  # type: ignore[arg-type]
        with pytest.raises(AuthenticationError):
            await wrong.responses.create(model="agentchat", input="hi")
        with pytest.raises(AuthenticationError):
            await wrong.models.list()
    body: Any = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert (body["type"], body["code"]) == ("authentication_error", "invalid_api_key")
    assert caught.value.request_id  # the X-Request-ID header, as OpenAI's x-request-id
    # The service's own door keeps its envelope.
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post("/chat", json={"message": "hi"}, headers={"Authorization": "Bearer ak_nope"})
    assert set(r.json()["error"]) == {"type", "message", "request_id"}


async def test_not_found_and_bad_requests(oai: AsyncOpenAI, live: Live) -> None:
    for call in (oai.responses.retrieve("resp_" + "0" * 32), oai.responses.retrieve("nonsense")):
        with pytest.raises(NotFoundError):
            await call
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.get("/v1/files", headers={"Authorization": f"Bearer {oai.api_key}"})
        assert (r.status_code, r.json()["error"]["type"]) == (404, "invalid_request_error")
        r = await http.post(
            "/v1/chat/completions", content=b"{not json", headers={"Authorization": f"Bearer {oai.api_key}"}
        )
        assert r.status_code == 400
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(BadRequestError) as missing:
        await oai.chat.completions.create(model="agentchat", messages=[{"role": "user"}])  # type: ignore[typeddict-item]
    assert missing.value.body["param"] is not None  # type: ignore[index]
    # The Idempotency-Key, reused with another body: a 400 too (the service's 422).
    key = {"Idempotency-Key": "k-1"}
    await oai.chat.completions.create(model="agentchat", messages=HI, extra_headers=key)  # type: ignore[arg-type]
    with pytest.raises(BadRequestError) as reused:
        await oai.chat.completions.create(
            model="agentchat", messages=[{"role": "user", "content": "other"}], extra_headers=key
        )
    assert reused.value.body["code"] == "idempotency_key_reused"  # type: ignore[index]


async def test_upstream_failures_map_to_the_sdks_classes(oai: AsyncOpenAI) -> None:
    with pytest.raises(RateLimitError) as limited:
        await oai.responses.create(model="agentchat", input="x [[status:429]]")
    assert limited.value.response.headers["retry-after"]
    for directive in ("[[status:500]]", "[[status:529]]"):
        with pytest.raises(InternalServerError) as failed:
            await oai.chat.completions.create(model="agentchat", messages=[{"role": "user", "content": directive}])
        assert failed.value.body["type"] == "server_error"  # type: ignore[index]
    # After the stream began: the SDK raises from the stream (Chat Completions) or the response fails.
    stream = await oai.chat.completions.create(
        model="agentchat", messages=[{"role": "user", "content": "[[midstream_error]]"}], stream=True
    )
    with pytest.raises(APIError):
        async for _ in stream:
            pass
    async with oai.responses.stream(model="agentchat", input="[[midstream_error]]") as events:
        kinds = [event.type async for event in events]
    assert kinds[-1] == "response.failed"


@pytest.fixture
async def limited(settings: Settings) -> AsyncIterator[Live]:
    async with live_server(create_app(settings.model_copy(update={"rate_limit_per_minute": 2}))) as server:
        yield server


async def test_per_key_limits(limited: Live) -> None:
    async with sdk(limited, await make_key(limited.state)) as client:
        await client.models.list()
        await client.chat.completions.create(model="agentchat", messages=HI)  # type: ignore[arg-type]
        with pytest.raises(RateLimitError) as caught:
            await client.responses.create(model="agentchat", input="hi")
    assert int(caught.value.response.headers["retry-after"]) > 0
    assert caught.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]


async def _row(live: Live, openai_id: str) -> Message:
    async with live.state.sessions() as session:
        row = await session.get(Message, message_id(openai_id))
    assert row is not None
    return row


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_leaving_a_stream_cancels_upstream_and_keeps_the_partial(
    oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer, api: str
) -> None:
    ask = "[[words:500]] [[slow:0.02]]"
    seen, openai_id = "", ""
    if api == "chat":
        chunks = await oai.chat.completions.create(
            model="agentchat", messages=[{"role": "user", "content": ask}], stream=True
        )
        async for chunk in chunks:
            openai_id, seen = chunk.id, seen + (chunk.choices[0].delta.content or "")
            if seen.count("word") >= 5:
                break
        await chunks.close()
    else:
        events = await oai.responses.create(model="agentchat", input=ask, stream=True)
        async for event in events:
            if event.type == "response.created":
                openai_id = event.response.id
            if event.type == "response.output_text.delta":
                seen += event.delta
                if seen.count("word") >= 5:
                    break
        await events.close()
    await eventually(lambda: llm_server.state.open_streams == 0, timeout=2.0)
    assert llm_server.state.closed_by_client >= 1  # the upstream call was cancelled, not read to its end

    async def recorded() -> bool:
        return (await _row(live, openai_id)).status == "incomplete"

    await eventually(recorded, timeout=3.0)
    row = await _row(live, openai_id)
    assert row.content[0]["text"].startswith(seen)
    assert row.stop_reason == "client_disconnected"
    if api == "responses":
        left = await oai.responses.retrieve(openai_id)
        assert (left.status, left.incomplete_details and left.incomplete_details.reason) == (
            "incomplete",
            "client_disconnected",
        )


async def test_a_background_stream_outlives_its_client(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    events = await oai.responses.create(
        model="agentchat", input="[[words:40]] [[slow:0.01]]", stream=True, background=True
    )
    async for event in events:
        if event.type == "response.output_text.delta":
            response_id = event.item_id.removeprefix("msg_").rsplit("_", 1)[0]
            break
    await events.close()

    async def completed() -> bool:
        return (await oai.responses.retrieve(f"resp_{response_id}")).status == "completed"

    await eventually(completed, timeout=5.0)
    assert llm_server.state.closed_by_client == 0


async def test_no_connection_is_held_across_the_model_call(oai: AsyncOpenAI, live: Live) -> None:
    engine: Any = live.state.engine
    stream = await oai.chat.completions.create(
        model="agentchat", messages=[{"role": "user", "content": "[[words:20]] [[slow:0.05]]"}], stream=True
    )
    held = []
    async for _ in stream:
        held.append(engine.pool.checkedout())
    assert len(held) > 10
    assert max(held) == 0  # phase 1 and 3 are one statement each; nothing is checked out while it streams
