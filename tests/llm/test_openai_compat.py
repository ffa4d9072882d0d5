"""OpenAICompatModel against the fake OpenAI-compatible server (real HTTP, real SSE)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from app.core.config import Settings
from app.llm.base import Completed, LLMEvent, LLMRequest, TextDelta, ToolCall
from app.llm.errors import UpstreamError, UpstreamOverloaded, UpstreamRateLimited, UpstreamRejected, UpstreamTimeout
from app.llm.openai_compat import OpenAICompatModel, build_payload
from testkit.fake_llm import FakeLLMServer
from tests.agent.test_fetch_url import local_server, response

LOOKUP_TOOL = {
    "name": "lookup",
    "description": "Look something up.",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeLLMServer) -> FakeLLMServer:
    server.reset()
    return server


def make_model(fake: FakeLLMServer, http: httpx2.AsyncClient, **overrides: Any) -> OpenAICompatModel:
    values: dict[str, Any] = {"llm_max_retries": 0, "llm_read_timeout": 5.0, "llm_connect_timeout": 2.0}
    values.update(overrides)
    settings = Settings(openai_base_url=f"{fake.url}/v1", llm_provider="openai", **values)
    return OpenAICompatModel(settings, http)


def ask(text: str, **kwargs: Any) -> LLMRequest:
    return LLMRequest(model="fake-model", max_tokens=256, messages=[{"role": "user", "content": text}], **kwargs)


async def collect(model: OpenAICompatModel, request: LLMRequest, into: list[LLMEvent] | None = None) -> list[LLMEvent]:
    """All events of one call; `into` keeps those that arrived before a failure."""
    received = [] if into is None else into
    async with model.stream(request) as events:
        async for event in events:
            received.append(event)
    return received


async def recorded(http: httpx2.AsyncClient, fake: FakeLLMServer) -> list[dict[str, Any]]:
    response = await http.get(f"{fake.url}/_requests")
    body: list[dict[str, Any]] = response.json()
    return body


async def open_streams(http: httpx2.AsyncClient, fake: FakeLLMServer) -> int:
    response = await http.get(f"{fake.url}/_stats")
    return int(response.json()["open_streams"])


async def wait_streams_closed(http: httpx2.AsyncClient, fake: FakeLLMServer, within: float = 1.0) -> None:
    # The fake notices the disconnect on its own thread; poll its gauge briefly.
    for _ in range(int(within / 0.02) + 1):
        if (count := await open_streams(http, fake)) == 0:
            return
        await asyncio.sleep(0.02)
    assert count == 0, f"{count} upstream stream(s) still open after {within}s"


def text_of(events: list[LLMEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


# --- streaming ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_streams_echo_with_usage_and_completed(fake: FakeLLMServer) -> None:
    async with httpx2.AsyncClient() as http:
        events = await collect(make_model(fake, http), ask("hello there friend"))

    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) > 1  # really streamed, not one blob
    assert text_of(events) == "echo: hello there friend"
    final = events[-1]
    assert isinstance(final, Completed)
    assert sum(isinstance(e, Completed) for e in events) == 1
    assert final.stop_reason == "end_turn"
    assert final.content == [{"type": "text", "text": "echo: hello there friend"}]
    assert final.usage.input_tokens > 0
    assert final.usage.output_tokens == 4


@pytest.mark.asyncio
async def test_sends_a_streaming_request_with_system_and_history(fake: FakeLLMServer) -> None:
    request = LLMRequest(
        model="fake-model",
        max_tokens=123,
        system="You are terse.",
        messages=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "answer"}]},
            {"role": "user", "content": [{"type": "text", "text": "second question"}]},
        ],
    )
    async with httpx2.AsyncClient() as http:
        events = await collect(make_model(fake, http), request)
        [sent] = await recorded(http, fake)

    assert text_of(events) == "echo: second question"
    assert sent["model"] == "fake-model"
    assert sent["max_tokens"] == 123
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert "tools" not in sent
    assert sent["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first\nanswer"},
        {"role": "user", "content": "second question"},
    ]


@pytest.mark.asyncio
async def test_base_url_with_trailing_slash(fake: FakeLLMServer) -> None:
    async with httpx2.AsyncClient() as http:
        settings = Settings(openai_base_url=f"{fake.url}/v1/", llm_provider="openai")
        events = await collect(OpenAICompatModel(settings, http), ask("slash"))
    assert text_of(events) == "echo: slash"


@pytest.mark.asyncio
async def test_api_key_is_sent_as_bearer_only_when_configured() -> None:
    async with FakeLLMServer(require_openai_key=True) as fake, httpx2.AsyncClient() as http:
        with pytest.raises(UpstreamRejected):
            await collect(make_model(fake, http), ask("no key"))
        events = await collect(make_model(fake, http, openai_api_key="sk-test"), ask("with key"))
    assert text_of(events) == "echo: with key"


# --- tools ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_tool_call_round_trip(fake: FakeLLMServer) -> None:
    first = ask('find it [[tool:lookup {"q": "weather in Paris", "n": 2}]]', tools=[LOOKUP_TOOL])
    async with httpx2.AsyncClient() as http:
        model = make_model(fake, http)
        events = await collect(model, first)

        calls = [e for e in events if isinstance(e, ToolCall)]
        assert len(calls) == 1
        call = calls[0]
        assert call.name == "lookup"
        assert call.input == {"q": "weather in Paris", "n": 2}
        assert call.id
        final = events[-1]
        assert isinstance(final, Completed)
        assert final.stop_reason == "tool_use"
        assert final.content == [
            {"type": "text", "text": "Let me use lookup."},
            {"type": "tool_use", "id": call.id, "name": "lookup", "input": call.input},
        ]

        # Feed the result back in the service's (Anthropic) shape.
        history = [
            *first.messages,
            {"role": "assistant", "content": final.content},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": call.id, "content": [{"type": "text", "text": "sunny"}]}
                ],
            },
        ]
        second = LLMRequest(model="fake-model", max_tokens=256, messages=history, tools=[LOOKUP_TOOL])
        events = await collect(model, second)
        sent = (await recorded(http, fake))[-1]

    assert text_of(events) == "tool results: sunny"
    final = events[-1]
    assert isinstance(final, Completed)
    assert final.stop_reason == "end_turn"
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up.",
                "parameters": LOOKUP_TOOL["input_schema"],
            },
        }
    ]
    assistant, tool = sent["messages"][1], sent["messages"][2]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == "Let me use lookup."
    [tool_call] = assistant["tool_calls"]
    assert tool_call["id"] == call.id
    assert tool_call["type"] == "function"
    assert tool_call["function"]["name"] == "lookup"
    assert isinstance(tool_call["function"]["arguments"], str)
    assert tool_call["function"]["arguments"] == '{"q": "weather in Paris", "n": 2}'
    assert tool == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}
    assert len(sent["messages"]) == 3


def test_tool_results_come_first_and_errors_are_marked() -> None:
    request = LLMRequest(
        model="m",
        max_tokens=10,
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "a", "name": "one", "input": {}},
                    {"type": "tool_use", "id": "b", "name": "two", "input": {"x": 1}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "a", "content": "fine"},
                    {"type": "tool_result", "tool_use_id": "b", "content": "boom", "is_error": True},
                    {"type": "text", "text": "and now?"},
                ],
            },
        ],
    )
    messages = build_payload(request)["messages"]
    assert messages[1]["content"] == ""
    assert [c["function"]["arguments"] for c in messages[1]["tool_calls"]] == ["{}", '{"x": 1}']
    assert messages[2:] == [
        {"role": "tool", "tool_call_id": "a", "content": "fine"},
        {"role": "tool", "tool_call_id": "b", "content": "ERROR: boom"},
        {"role": "user", "content": "and now?"},
    ]


# --- errors and retries ---------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, UpstreamRejected),
        (401, UpstreamRejected),
        (404, UpstreamRejected),
        (429, UpstreamRateLimited),
        (500, UpstreamError),
        (502, UpstreamError),
        (503, UpstreamOverloaded),
        (529, UpstreamOverloaded),
        (504, UpstreamTimeout),
    ],
)
async def test_error_statuses_map_to_upstream_errors(
    fake: FakeLLMServer, status: int, error: type[UpstreamError]
) -> None:
    async with httpx2.AsyncClient() as http:
        with pytest.raises(UpstreamError) as caught:
            await collect(make_model(fake, http), ask(f"fail [[status:{status}]]"))
    assert type(caught.value) is error
    if status == 429:
        assert caught.value.headers == {"Retry-After": "7"}  # passed on from the provider


@pytest.mark.asyncio
async def test_transient_failures_are_retried_then_succeed(fake: FakeLLMServer) -> None:
    async with httpx2.AsyncClient() as http:
        events = await collect(make_model(fake, http, llm_max_retries=2), ask("again [[fail_first:2:503]]"))
        sent = await recorded(http, fake)
    assert text_of(events) == "echo: again"
    assert len(sent) == 3


@pytest.mark.asyncio
async def test_rate_limits_are_retried_too(fake: FakeLLMServer) -> None:
    async with httpx2.AsyncClient() as http:
        events = await collect(make_model(fake, http, llm_max_retries=1), ask("limit [[fail_first:1:429]]"))
        sent = await recorded(http, fake)
    assert text_of(events) == "echo: limit"
    assert len(sent) == 2
    assert sent[0] == sent[1]  # the same request again


@pytest.mark.asyncio
async def test_overloaded_529_is_retried(fake: FakeLLMServer) -> None:
    async with httpx2.AsyncClient() as http:
        events = await collect(make_model(fake, http, llm_max_retries=2), ask("busy [[fail_first:2:529]]"))
        assert len(await recorded(http, fake)) == 3
    assert text_of(events) == "echo: busy"


@pytest.mark.asyncio
async def test_a_timeout_before_the_answer_begins_is_retried_then_reported(fake: FakeLLMServer) -> None:
    # Nothing reached the caller yet, so the SDK sends the request again (bounded by LLM_MAX_RETRIES).
    async with httpx2.AsyncClient() as http:
        model = make_model(fake, http, llm_read_timeout=0.2, llm_max_retries=1)
        with pytest.raises(UpstreamTimeout):
            await collect(model, ask("slow start [[delay_first:30]]"))
        assert len(await recorded(http, fake)) == 2


@pytest.mark.asyncio
async def test_no_retry_when_max_retries_is_zero(fake: FakeLLMServer) -> None:
    async with httpx2.AsyncClient() as http:
        with pytest.raises(UpstreamOverloaded):
            await collect(make_model(fake, http, llm_max_retries=0), ask("once [[fail_first:1:503]]"))
        assert len(await recorded(http, fake)) == 1


@pytest.mark.asyncio
async def test_no_retry_when_the_provider_says_it_would_not_help(fake: FakeLLMServer) -> None:
    # [[status]] answers carry "x-should-retry: false" (and 429s a 7 s Retry-After).
    async with httpx2.AsyncClient() as http:
        model = make_model(fake, http, llm_max_retries=2)
        started = time.monotonic()
        with pytest.raises(UpstreamRateLimited):
            await collect(model, ask("no [[status:429]]"))
        assert time.monotonic() - started < 1.0
        assert len(await recorded(http, fake)) == 1


@pytest.mark.asyncio
async def test_retries_are_bounded(fake: FakeLLMServer) -> None:
    async with httpx2.AsyncClient() as http:
        with pytest.raises(UpstreamError):
            await collect(make_model(fake, http, llm_max_retries=1), ask("always [[fail_first:5:500]]"))
        assert len(await recorded(http, fake)) == 2


@pytest.mark.asyncio
async def test_error_inside_the_stream_after_text(fake: FakeLLMServer) -> None:
    events: list[LLMEvent] = []
    async with httpx2.AsyncClient() as http:
        model = make_model(fake, http, llm_max_retries=2)
        with pytest.raises(UpstreamError):
            await collect(model, ask("one two three four [[midstream_error]]"), into=events)
        assert len(await recorded(http, fake)) == 1  # text was produced: never retried
        await wait_streams_closed(http, fake)
    assert text_of(events) == "echo: one"
    assert not any(isinstance(e, Completed) for e in events)


@pytest.mark.asyncio
async def test_connection_dropped_mid_stream(fake: FakeLLMServer) -> None:
    events: list[LLMEvent] = []
    async with httpx2.AsyncClient() as http:
        model = make_model(fake, http, llm_max_retries=2)
        with pytest.raises(UpstreamError) as caught:
            await collect(model, ask("one two three four [[drop]]"), into=events)
        assert len(await recorded(http, fake)) == 1
    assert type(caught.value) is UpstreamError
    assert "dropped mid-answer" in caught.value.message
    assert isinstance(caught.value.__cause__, openai.APIConnectionError)
    assert isinstance(caught.value.__cause__.__cause__, httpx2.TransportError)
    assert text_of(events) == "echo: one"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"data: {not json\n\n", "unreadable stream"),
        (b'data: {"choices": [{"index": 0, "delta": {"content": "cut"}}]}\n\n', "ended the stream early"),
    ],
)
async def test_a_broken_stream_is_an_upstream_error(body: bytes, message: str) -> None:
    answer = response(body, Content_Type="text/event-stream")
    async with local_server({"/v1/chat/completions": answer}) as server, httpx2.AsyncClient() as http:
        settings = Settings(openai_base_url=f"http://127.0.0.1:{server.port}/v1", llm_provider="openai")
        with pytest.raises(UpstreamError) as caught:
            await collect(OpenAICompatModel(settings, http), ask("anything"))
    assert type(caught.value) is UpstreamError
    assert message in caught.value.message
    assert "authorization" not in server.requests[0]  # no key configured: none sent, not even the SDK's placeholder


@pytest.mark.asyncio
async def test_unreachable_provider_is_an_upstream_error() -> None:
    with FakeLLMServer() as gone:
        url = gone.url
    async with httpx2.AsyncClient() as http:
        settings = Settings(openai_base_url=f"{url}/v1", llm_provider="openai", llm_max_retries=1)
        with pytest.raises(UpstreamError) as caught:
            await collect(OpenAICompatModel(settings, http), ask("anyone?"))
    assert type(caught.value) is UpstreamError
    assert isinstance(caught.value.__cause__, openai.APIConnectionError)
    assert isinstance(caught.value.__cause__.__cause__, httpx2.ConnectError)


@pytest.mark.asyncio
async def test_calls_go_through_the_shared_client(fake: FakeLLMServer) -> None:
    # One HTTP stack in the service: the SDK sends through the app's client, not a pool of its own.
    seen: list[str] = []

    async def note(request: httpx2.Request) -> None:
        seen.append(f"{request.method} {request.url.path}")

    async with httpx2.AsyncClient(event_hooks={"request": [note]}) as http:
        events = await collect(make_model(fake, http), ask("shared"))
    assert text_of(events) == "echo: shared"
    assert seen == ["POST /v1/chat/completions"]


@pytest.mark.asyncio
async def test_the_api_key_never_reaches_the_logs(fake: FakeLLMServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)  # the SDK's and httpx2's debug logs included
    async with httpx2.AsyncClient() as http:
        model = make_model(fake, http, openai_api_key="sk-very-secret-1234", llm_max_retries=1)
        await collect(model, ask("log me [[fail_first:1:500]]"))
    assert "Retrying request" in caplog.text  # the SDK's logs were captured
    assert "sk-very-secret-1234" not in caplog.text


# --- timeouts and cancellation --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_hang_times_out_and_closes_the_stream(fake: FakeLLMServer) -> None:
    async with httpx2.AsyncClient() as http:
        model = make_model(fake, http, llm_read_timeout=0.3, llm_max_retries=2)
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await collect(model, ask("wait [[hang]]"))
        assert time.monotonic() - started < 2.0  # a read timeout is not retried
        await wait_streams_closed(http, fake)


@pytest.mark.asyncio
async def test_cancelling_the_consumer_closes_the_upstream_stream(fake: FakeLLMServer) -> None:
    got_first = asyncio.Event()
    received: list[LLMEvent] = []

    async with httpx2.AsyncClient() as http:
        model = make_model(fake, http)

        async def consume() -> None:
            async with model.stream(ask("go [[words:500]] [[slow:0.02]]")) as events:
                async for event in events:
                    received.append(event)
                    got_first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(got_first.wait(), 5)
        assert await open_streams(http, fake) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_streams_closed(http, fake, within=1.0)
        stats = (await http.get(f"{fake.url}/_stats")).json()

    assert stats["closed_by_client"] == 1
    assert not any(isinstance(e, Completed) for e in received)


@pytest.mark.asyncio
async def test_leaving_the_block_early_closes_the_upstream_stream(fake: FakeLLMServer) -> None:
    async with httpx2.AsyncClient() as http:
        model = make_model(fake, http)
        async with model.stream(ask("go [[words:500]] [[slow:0.02]]")) as events:
            async for _ in events:
                break
        await wait_streams_closed(http, fake, within=1.0)
