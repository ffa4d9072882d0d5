"""Tests of the fake LLM server (testkit.fake_llm) itself, driven through the real anthropic SDK and httpx."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from anthropic.types import Message

from testkit.fake_llm import DirectiveError, FakeLLMServer, FakeLLMState, parse_directives
from testkit.net import free_port

MODEL = "claude-fake-1"
# Typed as Any: the SDK's TypedDict params are stricter than plain dict literals.
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLOCK_TOOL: Any = {
    "name": "get_time",
    "description": "Current time in a timezone.",
    "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}},
}
# What the SDK raises when a stream is cut short or times out while being read.
STREAM_BROKEN = (httpx2.HTTPError, anthropic.APIConnectionError)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def fake(shared_server: FakeLLMServer) -> FakeLLMServer:
    shared_server.reset()
    return shared_server


@asynccontextmanager
async def sdk(fake: FakeLLMServer, **options: Any) -> AsyncIterator[anthropic.AsyncAnthropic]:
    options.setdefault("max_retries", 0)
    async with anthropic.AsyncAnthropic(base_url=fake.url, api_key="test", **options) as client:
        yield client


def user(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


def text_of(message: Message) -> str:
    """The concatenated text blocks of a response."""
    return "".join(block.text for block in message.content if block.type == "text")


async def collect_text(client: anthropic.AsyncAnthropic, prompt: str, into: list[str]) -> None:
    """Stream ``prompt`` and append each text delta to ``into`` (kept when the stream fails)."""
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=user(prompt)) as stream:
        async for text in stream.text_stream:
            into.append(text)


async def stream_failure(client: anthropic.AsyncAnthropic, prompt: str, into: list[str]) -> Exception:
    """Like collect_text, but returns the error the stream must end with.

    On an SSE ``error`` event the SDK raises from the consumer side, leaving its httpx2
    generators suspended until the exception is freed. Dropping the traceback frees them
    now, in this thread; kept in ``pytest.raises`` they would wait for the cycle collector,
    which may run in the server's thread and report "Exception ignored in <async_generator>".
    """
    try:
        await collect_text(client, prompt, into)
    except Exception as exc:
        exc.__traceback__ = None
        return exc
    raise AssertionError(f"streaming {prompt!r} did not fail")


async def wait_until(predicate: Callable[[], bool], within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- plain answers


@pytest.mark.asyncio
async def test_json_echo(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:
        message = await client.messages.create(
            model=MODEL, max_tokens=64, system="Be brief.", messages=user("hello there world")
        )
    assert [b.type for b in message.content] == ["text"]
    assert text_of(message) == "echo: hello there world"
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert message.id.startswith("msg_")
    assert message.usage.input_tokens == 5  # "Be brief." + 3 words
    assert message.usage.output_tokens == 4
    assert message.usage.cache_creation_input_tokens == 0
    assert message.usage.cache_read_input_tokens == 0
    assert fake.state.request_bodies()[-1]["messages"] == user("hello there world")
    assert fake.state.stats()["requests"] == 1
    assert fake.state.rejections == []


@pytest.mark.asyncio
async def test_stream_echo_with_usage(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("one two three")) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_message()
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert len(deltas) == 4  # word by word
    assert [e.type for e in events if e.type not in ("content_block_delta", "text")] == [
        "message_start",
        "content_block_start",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert text_of(final) == "echo: one two three"
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 3
    assert final.usage.output_tokens == 4
    assert final.usage.cache_read_input_tokens == 0
    await wait_until(lambda: fake.state.open_streams == 0)
    assert fake.state.stats()["max_open_streams"] == 1
    assert fake.state.closed_by_client == 0


@pytest.mark.asyncio
async def test_raw_sse_wire_format(fake: FakeLLMServer) -> None:
    body = {"model": MODEL, "max_tokens": 10, "stream": True, "messages": user("hi")}
    headers = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=fake.url) as http:
        response = await http.post("/v1/messages", json=body, headers=headers)
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.strip().split("\n\n")
    names = [b.split("\n")[0].removeprefix("event: ") for b in blocks]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start = json.loads(blocks[0].split("\n")[1].removeprefix("data: "))
    assert start["message"]["content"] == []
    assert start["message"]["stop_reason"] is None
    assert start["message"]["usage"]["output_tokens"] == 1


@pytest.mark.asyncio
async def test_cache_control_reports_cache_read(fake: FakeLLMServer) -> None:
    system: Any = [{"type": "text", "text": "You are a very helpful agent", "cache_control": {"type": "ephemeral"}}]
    async with sdk(fake) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, system=system, messages=user("hi"))
    assert message.usage.input_tokens == 7
    assert message.usage.cache_read_input_tokens == 3
    assert message.usage.cache_creation_input_tokens == 0


@pytest.mark.asyncio
async def test_reply_words_and_stop_directives(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:
        reply = await client.messages.create(model=MODEL, max_tokens=64, messages=user("x [[reply:Hello, [world]!]]"))
        truncated = await client.messages.create(model=MODEL, max_tokens=64, messages=user("[[stop:max_tokens]] hi"))
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("[[words:25]]")) as stream:
            deltas = [e async for e in stream if e.type == "content_block_delta"]
            final = await stream.get_final_message()
    assert text_of(reply) == "Hello, [world]!"
    assert truncated.stop_reason == "max_tokens"
    assert text_of(truncated) == "echo: hi"
    assert len(deltas) == 25
    assert text_of(final) == " ".join(f"word{i}" for i in range(1, 26))
    assert final.usage.output_tokens == 25


@pytest.mark.asyncio
async def test_slow_and_delay_first(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:
        started = time.monotonic()
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("[[words:4]] [[slow:0.1]]")) as s:
            await s.get_final_message()
        assert time.monotonic() - started >= 0.4
        with pytest.raises(anthropic.APITimeoutError):
            await client.with_options(timeout=0.3).messages.create(
                model=MODEL, max_tokens=64, messages=user("hi [[delay_first:5]]")
            )


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("status", "exc_class", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.ContentTooLargeError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (503, anthropic.ServiceUnavailableError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
@pytest.mark.asyncio
async def test_status_directive_maps_to_sdk_exception(
    fake: FakeLLMServer, status: int, exc_class: type[anthropic.APIStatusError], error_type: str
) -> None:
    async with sdk(fake, max_retries=2) as client:
        with pytest.raises(exc_class) as caught:
            await client.messages.create(model=MODEL, max_tokens=64, messages=user(f"hi [[status:{status}]]"))
    error = caught.value
    assert error.status_code == status
    assert error.type == error_type
    assert error.body["request_id"].startswith("req_fake")  # type: ignore[index]
    assert error.response.headers["x-should-retry"] == "false"
    assert error.response.headers.get("retry-after") == ("7" if status in (429, 529) else None)
    # x-should-retry: false stops the SDK's own retries.
    assert fake.state.request_count == 1
    # A scripted error is not a validation rejection.
    assert fake.state.rejections == []


@pytest.mark.asyncio
async def test_status_directive_in_stream_mode(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:
        with pytest.raises(anthropic.OverloadedError):
            async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("[[status:529]]")) as s:
                await s.get_final_message()


@pytest.mark.asyncio
async def test_fail_first_is_retried_by_the_sdk(fake: FakeLLMServer) -> None:
    async with sdk(fake, max_retries=3) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=user("go [[fail_first:2:529]]"))
    assert text_of(message) == "echo: go"
    assert fake.state.request_count == 3


@pytest.mark.asyncio
async def test_fail_first_counts_per_text(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(model=MODEL, max_tokens=64, messages=user("a [[fail_first:1:429]]"))
        assert caught.value.response.headers["retry-after-ms"] == "10"
        assert "x-should-retry" not in caught.value.response.headers
        # A different text has its own counter; the same text now succeeds.
        with pytest.raises(anthropic.RateLimitError):
            await client.messages.create(model=MODEL, max_tokens=64, messages=user("b [[fail_first:1:429]]"))
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=user("a [[fail_first:1:429]]"))
    assert text_of(message) == "echo: a"


@pytest.mark.asyncio
async def test_midstream_error_raises_inside_the_stream(fake: FakeLLMServer) -> None:
    texts: list[str] = []
    async with sdk(fake) as client:
        error = await stream_failure(client, "[[midstream_error]] [[words:10]]", texts)
        # In JSON mode the same directive is a plain 529.
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model=MODEL, max_tokens=64, messages=user("[[midstream_error]]"))
    assert texts == ["word1", " word2"]
    assert isinstance(error, anthropic.APIStatusError)
    assert error.body == {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    await wait_until(lambda: fake.state.open_streams == 0)


@pytest.mark.asyncio
async def test_drop_breaks_the_stream(fake: FakeLLMServer) -> None:
    texts: list[str] = []
    async with sdk(fake) as client:
        with pytest.raises(STREAM_BROKEN):
            await collect_text(client, "[[drop]] [[words:10]]", texts)
        # The server survives and answers the next request.
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=user("still there?"))
    assert texts == ["word1", " word2"]
    assert text_of(message) == "echo: still there?"
    await wait_until(lambda: fake.state.open_streams == 0)


# --------------------------------------------------------------------------- hangs and disconnects


@pytest.mark.asyncio
async def test_hang_with_client_timeout_closes_the_stream(fake: FakeLLMServer) -> None:
    events: list[str] = []

    async def consume(client: anthropic.AsyncAnthropic) -> None:
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("[[hang]]")) as stream:
            async for event in stream:
                events.append(event.type)
                assert fake.state.open_streams == 1

    async with sdk(fake, timeout=0.5) as client:
        with pytest.raises(STREAM_BROKEN):
            await consume(client)
    assert events == ["message_start"]
    await wait_until(lambda: fake.state.open_streams == 0, within=1.0)
    assert fake.state.stats() | {"requests": 1} == {
        "requests": 1,
        "open_streams": 0,
        "max_open_streams": 1,
        "closed_by_client": 1,
        "rejections": [],
    }


@pytest.mark.asyncio
async def test_json_hang_times_out_on_the_client(fake: FakeLLMServer) -> None:
    async with sdk(fake, timeout=0.3) as client:
        with pytest.raises(anthropic.APITimeoutError):
            await client.messages.create(model=MODEL, max_tokens=64, messages=user("[[hang]]"))
        message = await client.messages.create(model=MODEL, max_tokens=64, messages=user("next"))
    assert text_of(message) == "echo: next"
    assert fake.state.open_streams == 0  # a JSON answer is not a stream


@pytest.mark.asyncio
async def test_cancelled_consumer_releases_the_stream(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:

        async def consume() -> None:
            async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("[[hang]]")) as stream:
                async for _ in stream:
                    pass

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(consume(), timeout=0.3)
    await wait_until(lambda: fake.state.open_streams == 0, within=1.0)
    assert fake.state.closed_by_client == 1


@pytest.mark.asyncio
async def test_concurrent_streams_are_counted(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:

        async def one(i: int) -> str:
            text = f"n{i} [[words:3]] [[slow:0.1]]"
            async with client.messages.stream(model=MODEL, max_tokens=64, messages=user(text)) as stream:
                return await stream.get_final_text()

        results = await asyncio.gather(*(one(i) for i in range(5)))
    assert results == ["word1 word2 word3"] * 5
    assert fake.state.max_open_streams == 5
    await wait_until(lambda: fake.state.open_streams == 0)


@pytest.mark.asyncio
async def test_stopping_the_server_ends_hanging_streams_quickly() -> None:
    async with FakeLLMServer() as server, sdk(server) as client:
        async with client.messages.stream(model=MODEL, max_tokens=64, messages=user("[[hang]]")) as stream:
            first = await stream.__anext__()
            assert first.type == "message_start"
            started = time.monotonic()
            await server.__aexit__(None, None, None)
            assert time.monotonic() - started < 3
            with pytest.raises(STREAM_BROKEN):
                await stream.__anext__()
    assert server.state.open_streams == 0


# --------------------------------------------------------------------------- tools


@pytest.mark.asyncio
async def test_tool_use_then_tool_result(fake: FakeLLMServer) -> None:
    prompt = 'weather? [[tool:get_weather {"city": "Paris"}]]'
    async with sdk(fake) as client:
        first = await client.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER_TOOL], messages=user(prompt))
        assert first.stop_reason == "tool_use"
        assert [b.type for b in first.content] == ["text", "tool_use"]
        assert text_of(first) == "Let me use get_weather."
        call = first.content[1]
        assert call.type == "tool_use"
        assert call.name == "get_weather"
        assert call.input == {"city": "Paris"}
        assert call.id.startswith("toolu_")

        history = [
            *user(prompt),
            first.to_param(),
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
        ]
        second = await client.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER_TOOL], messages=history)
    assert second.stop_reason == "end_turn"
    assert text_of(second) == "tool results: sunny"
    assert fake.state.rejections == []


@pytest.mark.asyncio
async def test_parallel_tool_use_in_stream(fake: FakeLLMServer) -> None:
    prompt = 'do both [[tool:get_weather {"city": "Oslo", "days": [[1, 2]]}]] [[tool:get_time {"tz": "UTC"}]]'
    tools: Any = [WEATHER_TOOL, CLOCK_TOOL]
    async with sdk(fake) as client:
        async with client.messages.stream(model=MODEL, max_tokens=64, tools=tools, messages=user(prompt)) as stream:
            events = [e async for e in stream]
            first = await stream.get_final_message()
        json_deltas = [e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        assert len(json_deltas) > 2
        assert first.stop_reason == "tool_use"
        calls = [b for b in first.content if b.type == "tool_use"]
        assert [(c.name, c.input) for c in calls] == [
            ("get_weather", {"city": "Oslo", "days": [[1, 2]]}),
            ("get_time", {"tz": "UTC"}),
        ]
        assert calls[0].id != calls[1].id

        results: Any = [
            {"type": "tool_result", "tool_use_id": calls[0].id, "content": [{"type": "text", "text": "cold"}]},
            {"type": "tool_result", "tool_use_id": calls[1].id, "content": "clock broke", "is_error": True},
            {"type": "text", "text": "carry on"},
        ]
        history: Any = [*user(prompt), first.to_param(), {"role": "user", "content": results}]
        async with client.messages.stream(model=MODEL, max_tokens=64, tools=tools, messages=history) as stream:
            second = await stream.get_final_message()
    assert second.stop_reason == "end_turn"
    assert text_of(second) == "tool results: cold; ERROR clock broke"
    assert fake.state.rejections == []


@pytest.mark.asyncio
async def test_tool_chain_keeps_calling_until_k_rounds(fake: FakeLLMServer) -> None:
    history: Any = user('loop [[tool:get_weather {"city": "Rome"}]] [[tool_chain:3]]')
    stop_reasons = []
    async with sdk(fake) as client:
        for round_number in range(1, 5):
            message = await client.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER_TOOL], messages=history)
            stop_reasons.append(message.stop_reason)
            if message.stop_reason != "tool_use":
                break
            call = message.content[-1]
            assert call.type == "tool_use"
            result = {"type": "tool_result", "tool_use_id": call.id, "content": f"r{round_number}"}
            history += [message.to_param(), {"role": "user", "content": [result]}]
    assert stop_reasons == ["tool_use", "tool_use", "tool_use", "end_turn"]
    assert text_of(message) == "tool results: r3"
    assert fake.state.rejections == []


# --------------------------------------------------------------------------- validation

TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}
TOOL_RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
HI = {"role": "user", "content": "hi"}


@pytest.mark.parametrize(
    ("messages", "tools", "reason"),
    [
        pytest.param([], [], "at least one message", id="no-messages"),
        pytest.param([{"role": "assistant", "content": "hi"}], [], 'first message must use the "user"', id="first"),
        pytest.param([HI, HI], [], 'two consecutive "user"', id="consecutive"),
        pytest.param([{"role": "user", "content": ""}], [], "non-empty content", id="empty-string"),
        pytest.param([{"role": "user", "content": "  \n"}], [], "non-whitespace", id="blank-string"),
        pytest.param(
            [{"role": "user", "content": [{"type": "text", "text": ""}]}], [], "must be non-empty", id="empty-block"
        ),
        pytest.param(
            [HI, {"role": "assistant", "content": [TOOL_USE]}, HI],
            [WEATHER_TOOL],
            "without `tool_result` blocks immediately after: toolu_1",
            id="unanswered-tool-use",
        ),
        pytest.param(
            [HI, {"role": "assistant", "content": [TOOL_USE]}],
            [WEATHER_TOOL],
            "without `tool_result` blocks",
            id="tool-use-last",
        ),
        pytest.param(
            [
                HI,
                {"role": "assistant", "content": [TOOL_USE]},
                {"role": "user", "content": [TOOL_RESULT, {**TOOL_RESULT, "tool_use_id": "toolu_2"}]},
            ],
            [WEATHER_TOOL],
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_2",
            id="unknown-tool-result",
        ),
        pytest.param(
            [
                HI,
                {"role": "assistant", "content": [TOOL_USE]},
                {"role": "user", "content": [{"type": "text", "text": "first"}, TOOL_RESULT]},
            ],
            [WEATHER_TOOL],
            "must come before any other content",
            id="tool-result-not-first",
        ),
        pytest.param([{"role": "user", "content": [TOOL_RESULT]}], [WEATHER_TOOL], "unexpected", id="orphan-result"),
        pytest.param(
            [HI, {"role": "assistant", "content": [TOOL_USE]}, {"role": "user", "content": [TOOL_RESULT]}],
            [],
            "must define tools",
            id="tools-missing",
        ),
        pytest.param(
            [HI, {"role": "assistant", "content": "Sure, "}], [], "trailing whitespace", id="prefill-whitespace"
        ),
        pytest.param([HI], [{**WEATHER_TOOL, "name": "get weather"}], "should match pattern", id="bad-tool-name"),
    ],
)
@pytest.mark.asyncio
async def test_invalid_history_is_rejected(
    fake: FakeLLMServer, messages: list[Any], tools: list[Any], reason: str
) -> None:
    extra: Any = {"tools": tools} if tools else {}
    async with sdk(fake, max_retries=2) as client:
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(model=MODEL, max_tokens=64, messages=messages, **extra)
    assert caught.value.type == "invalid_request_error"
    assert reason in (caught.value.api_message or "")
    assert len(fake.state.rejections) == 1
    assert reason in fake.state.rejections[0]
    assert fake.state.request_count == 1  # not retried


@pytest.mark.asyncio
async def test_valid_tool_history_and_prefill_are_accepted(fake: FakeLLMServer) -> None:
    history: Any = [
        {"role": "user", "content": [{"type": "text", "text": "weather?", "cache_control": {"type": "ephemeral"}}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."}, TOOL_USE]},
        {"role": "user", "content": [TOOL_RESULT, {"type": "text", "text": "and summarise"}]},
        {"role": "assistant", "content": "Summary:"},
    ]
    async with sdk(fake) as client:
        message = await client.messages.create(model=MODEL, max_tokens=64, tools=[WEATHER_TOOL], messages=history)
    assert text_of(message) == "echo: and summarise"
    assert message.usage.cache_read_input_tokens == message.usage.input_tokens // 2
    assert fake.state.rejections == []


@pytest.mark.parametrize(
    ("headers", "body", "status", "reason"),
    [
        pytest.param({"anthropic-version": "2023-06-01"}, {}, 401, "header is required", id="no-key"),
        pytest.param({"x-api-key": "k"}, {"model": MODEL}, 400, "anthropic-version", id="no-version"),
        pytest.param({}, {"max_tokens": 5}, 400, "model: Field required", id="no-model"),
        pytest.param({}, {"model": MODEL}, 400, "max_tokens: Field required", id="no-max-tokens"),
    ],
)
@pytest.mark.asyncio
async def test_raw_request_validation(
    fake: FakeLLMServer, headers: dict[str, str], body: dict[str, Any], status: int, reason: str
) -> None:
    headers = headers or {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    async with httpx.AsyncClient(base_url=fake.url) as http:
        response = await http.post("/v1/messages", json={**body, "messages": user("hi")}, headers=headers)
    assert response.status_code == status
    assert response.headers["x-should-retry"] == "false"
    error = response.json()
    assert error["type"] == "error"
    assert reason in error["error"]["message"]
    assert fake.state.rejections == [error["error"]["message"]]


@pytest.mark.asyncio
async def test_malformed_directive_is_a_400(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:
        with pytest.raises(anthropic.BadRequestError, match="bad argument"):
            await client.messages.create(model=MODEL, max_tokens=64, messages=user("[[slow:soon]]"))
    assert len(fake.state.rejections) == 1


def test_parse_directives() -> None:
    directives, text = parse_directives(
        'a [[tool:t {"x": [[1, 2]], "s": "]]"}]] b [[unknown:1]] [[hang]][[slow:0.5]][[fail_first:2:503]] c'
    )
    assert text == "a  b [[unknown:1]]  c"
    assert [(t.name, t.input) for t in directives.tools] == [("t", {"x": [[1, 2]], "s": "]]"})]
    assert directives.hang
    assert directives.slow == 0.5
    assert directives.fail_first == (2, 503)
    assert parse_directives("[[reply:]]")[0].reply == ""
    assert parse_directives("[[tool:noargs]]")[0].tools[0].input == {}
    for bad in ("[[status:200]]", "[[hang:1]]", "[[words]]", "[[tool:t [1]]]", "[[reply:open"):
        with pytest.raises(DirectiveError):
            parse_directives(bad)


# --------------------------------------------------------------------------- control endpoints and lifecycle


@pytest.mark.asyncio
async def test_control_endpoints(fake: FakeLLMServer) -> None:
    async with sdk(fake) as client:
        for text in ("first", "second"):
            await client.messages.create(model=MODEL, max_tokens=64, messages=user(text))
    async with httpx.AsyncClient(base_url=fake.url) as http:
        stats = (await http.get("/_stats")).json()
        recorded = (await http.get("/_requests")).json()
        assert (await http.post("/_reset")).status_code == 200
        after = (await http.get("/_stats")).json()
        recorded_after = (await http.get("/_requests")).json()
    assert stats == {"requests": 2, "open_streams": 0, "max_open_streams": 0, "closed_by_client": 0, "rejections": []}
    assert [r["messages"][0]["content"] for r in recorded] == ["first", "second"]
    assert after["requests"] == 0
    assert recorded_after == []


def test_recorded_requests_are_capped() -> None:
    state = FakeLLMState()
    for i in range(1005):
        state.record({"i": i})
    recorded = state.request_bodies()
    assert len(recorded) == 1000
    assert recorded[-1] == {"i": 1004}
    assert state.request_count == 1005


@pytest.mark.asyncio
async def test_async_context_manager_and_isolated_state(fake: FakeLLMServer) -> None:
    async with FakeLLMServer() as other, sdk(other) as client:
        assert other.url != fake.url
        await client.messages.create(model=MODEL, max_tokens=64, messages=user("hi"))
        assert other.state.request_count == 1
    assert fake.state.request_count == 0
    async with httpx.AsyncClient(timeout=1) as http:
        with pytest.raises(httpx.ConnectError):  # stopped for real
            await http.get(f"{other.url}/_stats")
    with pytest.raises(RuntimeError):
        _ = FakeLLMServer().url  # never started


def test_standalone_module_runs() -> None:
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "testkit.fake_llm", "--port", str(port)]
    with subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    stats = httpx.get(f"http://127.0.0.1:{port}/_stats", timeout=1).json()
                    break
                except httpx.TransportError:
                    assert process.poll() is None, process.stdout.read() if process.stdout else ""
                    assert time.monotonic() < deadline, "standalone server did not start"
                    time.sleep(0.1)
            client = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="test", max_retries=0)
            with client:
                message = client.messages.create(model=MODEL, max_tokens=64, messages=user("standalone"))
            assert stats["requests"] == 0
            assert text_of(message) == "echo: standalone"
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_sync_context_manager_with_sync_sdk() -> None:
    with FakeLLMServer() as server:
        with anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0) as client:
            with client.messages.stream(model=MODEL, max_tokens=64, messages=user("sync ok")) as stream:
                text = stream.get_final_text()
        assert text == "echo: sync ok"
        # The server finishes its bookkeeping just after the client saw the last byte.
        deadline = time.monotonic() + 1
        while server.state.open_streams and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.state.open_streams == 0


# --------------------------------------------------------------------------- OpenAI-compatible endpoint


def _openai_chunks(raw: str) -> list[Any]:
    lines = [line.removeprefix("data: ") for line in raw.split("\n\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


@pytest.mark.asyncio
async def test_openai_json_and_tool_round_trip(fake: FakeLLMServer) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    prompt = 'hi [[tool:get_weather {"city": "Lima"}]]'
    async with httpx.AsyncClient(base_url=fake.url) as http:
        plain = (
            await http.post("/v1/chat/completions", json={"model": "gpt-fake", "messages": user("hello you")})
        ).json()
        first = (
            await http.post(
                "/v1/chat/completions", json={"model": "gpt-fake", "messages": user(prompt), "tools": tools}
            )
        ).json()
        message = first["choices"][0]["message"]
        call = message["tool_calls"][0]
        history = [
            *user(prompt),
            message,
            {"role": "tool", "tool_call_id": call["id"], "content": "warm"},
        ]
        second = (
            await http.post("/v1/chat/completions", json={"model": "gpt-fake", "messages": history, "tools": tools})
        ).json()
    assert plain["object"] == "chat.completion"
    assert plain["choices"][0]["message"]["content"] == "echo: hello you"
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert plain["usage"]["prompt_tokens"] == 2
    assert plain["usage"]["completion_tokens"] == 3
    assert plain["usage"]["total_tokens"] == 5
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Lima"}
    assert second["choices"][0]["message"]["content"] == "tool results: warm"
    assert fake.state.rejections == []


@pytest.mark.asyncio
async def test_openai_stream_with_tool_calls_and_usage(fake: FakeLLMServer) -> None:
    body = {
        "model": "gpt-fake",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "sys"}, *user('x [[tool:a {"k": "v"}]] [[tool:b]]')],
    }
    async with httpx.AsyncClient(base_url=fake.url) as http:
        async with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            raw = "".join([chunk async for chunk in response.aiter_text()])
    chunks = _openai_chunks(raw)
    assert chunks[-1] == "[DONE]"
    usage_chunk = chunks[-2]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 6  # raw words, directives included
    body_chunks = chunks[:-2]
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in body_chunks)
    assert body_chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in body_chunks)
    assert text == "Let me use a, b."
    calls: dict[int, dict[str, str]] = {}
    for c in body_chunks:
        for delta in c["choices"][0]["delta"].get("tool_calls", []):
            entry = calls.setdefault(delta["index"], {"id": "", "name": "", "arguments": ""})
            entry["id"] += delta.get("id", "")
            entry["name"] += delta.get("function", {}).get("name", "")
            entry["arguments"] += delta.get("function", {}).get("arguments", "")
    assert [(c["name"], json.loads(c["arguments"])) for c in calls.values()] == [("a", {"k": "v"}), ("b", {})]
    assert all(c["id"].startswith("call_") for c in calls.values())


@pytest.mark.asyncio
async def test_openai_stream_plain_and_midstream_error(fake: FakeLLMServer) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as http:
        plain = await http.post("/v1/chat/completions", json={"model": "m", "stream": True, "messages": user("a b c")})
        broken = await http.post(
            "/v1/chat/completions", json={"model": "m", "stream": True, "messages": user("[[midstream_error]] a b c")}
        )
    plain_chunks = _openai_chunks(plain.text)
    assert plain_chunks[-1] == "[DONE]"
    assert "usage" not in plain_chunks[0]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in plain_chunks[:-1]) == "echo: a b c"
    broken_chunks = _openai_chunks(broken.text)
    assert "[DONE]" not in broken_chunks
    assert broken_chunks[-1]["error"]["message"] == "Overloaded"


@pytest.mark.asyncio
async def test_openai_errors_and_validation(fake: FakeLLMServer) -> None:
    async with httpx.AsyncClient(base_url=fake.url) as http:
        limited = await http.post("/v1/chat/completions", json={"model": "m", "messages": user("[[status:429]]")})
        empty = await http.post("/v1/chat/completions", json={"model": "m", "messages": []})
        orphan = await http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [*user("hi"), {"role": "tool", "tool_call_id": "call_x", "content": "r"}]},
        )
    assert limited.status_code == 429
    assert limited.headers["x-should-retry"] == "false"
    assert limited.json()["error"]["type"] == "requests"
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    assert empty.status_code == 400
    assert empty.json()["error"]["type"] == "invalid_request_error"
    assert orphan.status_code == 400
    assert "role 'tool' must be a response" in orphan.json()["error"]["message"]
    assert len(fake.state.rejections) == 2


@pytest.mark.asyncio
async def test_openai_key_required_when_configured() -> None:
    async with FakeLLMServer(require_openai_key=True) as server, httpx.AsyncClient(base_url=server.url) as http:
        body = {"model": "m", "messages": user("hi")}
        missing = await http.post("/v1/chat/completions", json=body)
        ok = await http.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer sk-test"})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert ok.status_code == 200
