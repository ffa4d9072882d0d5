"""The model client (the SDK on its aiohttp client, or on its httpx2 default: LLM_HTTP_CLIENT)
against a scripted HTTP/1.1 server.

Each test's server reads one request at a time and answers with the bytes the test gives, so
what a real provider (or a broken proxy in front of it) may do on the wire is exercised: framing
of every kind, keep-alive and its loss, silence, hang-ups and garbage, each seen as the service
sees it (`AnthropicModel`, whose `map_errors` turns failures into our upstream errors). The
SDK-level behaviour (retries, status errors, streams) is covered through the fake model in the
rest of the suite, which reaches it over the default client.
"""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import get_args

import anthropic
import pytest

from app.core.config import DEFAULT_MODEL, ModelHttpClientName, Settings
from app.llm.anthropic import AnthropicModel, _http_client
from app.llm.base import Completed, LLMEvent, LLMRequest
from app.llm.errors import UpstreamError, UpstreamOverloaded, UpstreamTimeout

MESSAGE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-test",
    "content": [{"type": "text", "text": "Hello there"}],
    "stop_reason": "end_turn",
    "usage": {"input_tokens": 2, "output_tokens": 3},
}
BODY = json.dumps(MESSAGE).encode()
CLIENTS = get_args(ModelHttpClientName)


def with_length(body: bytes = BODY, *, extra: bytes = b"", content_type: bytes = b"application/json") -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (content_type, len(body), extra)
    return head + body


def chunked(body: bytes = BODY, size: int = 7, *, content_type: bytes = b"application/json") -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ntransfer-encoding: chunked\r\n\r\n" % content_type
        + framed
        + (b"0\r\n\r\n")
    )


def sse(*events: dict[str, object]) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (str(e["type"]).encode(), json.dumps(e).encode()) for e in events)


STREAM_HEAD = sse(
    {"type": "message_start", "message": {**MESSAGE, "content": [], "usage": {"input_tokens": 2}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}},
)
STREAM_TAIL = sse(
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
    {"type": "message_stop"},
)

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class Server:
    """Counts connections and requests; `answer(reader, writer, n)` replies to request n, False = hang up."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.bodies: list[bytes] = []
        self.request_lines: list[bytes] = []
        self.closed = asyncio.Event()  # set each time a connection ends
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.request_lines.append(head.split(b"\r\n", 1)[0])
                lines = head.lower().split(b"\r\n")
                length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length")), 0)
                self.bodies.append(await reader.readexactly(length))
                self.requests += 1
                if not await self.answer(reader, writer, self.requests):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            self.closed.set()


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[Server]:
    server = Server(answer)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    server.url = f"http://127.0.0.1:{port}"
    async with listener:
        yield server
        listener.close()


def reply(data: bytes, *, keep: bool = True, delay: float = 0.0) -> Answer:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, __: int) -> bool:
        if delay:
            await asyncio.sleep(delay)
        writer.write(data)
        return keep

    return answer


@asynccontextmanager
async def model(
    url: str, kind: str, *, read_timeout: float = 5.0, max_connections: int = 10
) -> AsyncIterator[AnthropicModel]:
    settings = Settings(
        anthropic_api_key="k",
        anthropic_base_url=url,
        llm_provider="anthropic",
        llm_max_retries=0,
        llm_read_timeout=read_timeout,
        llm_max_connections=max_connections,
        llm_http_client=kind,
    )
    client = AnthropicModel(settings)
    try:
        yield client
    finally:
        await client.aclose()


def request(*, incremental: bool = False) -> LLMRequest:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    return LLMRequest(model="claude-test", messages=messages, max_tokens=10, incremental=incremental)


async def answer_of(client: AnthropicModel, *, incremental: bool = False) -> list[LLMEvent]:
    async with client.stream(request(incremental=incremental)) as events:
        return [event async for event in events]


def text_of(events: list[LLMEvent]) -> str:
    completed = events[-1]
    assert isinstance(completed, Completed)
    return "".join(str(block.get("text", "")) for block in completed.content)


@pytest.mark.parametrize("kind", CLIENTS)
async def test_sequential_calls_reuse_one_connection(kind: str) -> None:
    async with serving(reply(with_length())) as server, model(server.url, kind) as client:
        for _ in range(5):
            assert text_of(await answer_of(client)) == "Hello there"
    assert (server.connections, server.requests) == (1, 5)
    assert json.loads(server.bodies[0])["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "framing",
    [with_length(), chunked(), b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + BODY],
    ids=["content-length", "chunked", "until-close"],
)
async def test_every_body_framing_reads_whole(kind: str, framing: bytes) -> None:
    until_close = b"content-length" not in framing and b"chunked" not in framing
    async with serving(reply(framing, keep=not until_close)) as server, model(server.url, kind) as client:
        for _ in range(2):
            assert text_of(await answer_of(client)) == "Hello there"
    assert server.connections == (2 if until_close else 1)  # a body that ends with the connection can't reuse it


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_large_stream_arrives_intact_in_small_chunks(kind: str) -> None:
    deltas = [{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x" * 1000}}] * 2000
    body = STREAM_HEAD + sse(*deltas) + STREAM_TAIL  # megabytes, past any read buffer
    answer = reply(chunked(body, size=16 * 1024, content_type=b"text/event-stream"))
    async with serving(answer) as server, model(server.url, kind) as client:
        assert text_of(await answer_of(client, incremental=True)) == "Hello" + "x" * 2_000_000


@pytest.mark.parametrize("kind", CLIENTS)
async def test_connection_close_and_an_idle_hang_up_are_followed_by_a_new_connection(kind: str) -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(with_length(extra=b"connection: close\r\n") if n == 1 else with_length())
        return n != 1 and n != 2  # close after the first (announced) and the second (silently)

    async with serving(answer) as server, model(server.url, kind) as client:
        for _ in range(3):
            assert text_of(await answer_of(client)) == "Hello there"
            await asyncio.sleep(0.05)  # let the hang-up reach us while the connection is idle
    assert server.connections == 3


@pytest.mark.parametrize("kind", CLIENTS)
async def test_an_overloaded_status_is_ours_with_its_retry_after(kind: str) -> None:
    error = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}).encode()
    data = b"HTTP/1.1 529 Overloaded\r\ncontent-length: %d\r\nretry-after: 3\r\n\r\n%s" % (len(error), error)
    async with serving(reply(data)) as server, model(server.url, kind) as client:
        for incremental in (False, True):
            with pytest.raises(UpstreamOverloaded) as caught:
                await answer_of(client, incremental=incremental)
            assert caught.value.headers == {"Retry-After": "3"}


@pytest.mark.parametrize("kind", CLIENTS)
async def test_silence_is_a_timeout_and_the_connection_is_not_reused(kind: str) -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            await asyncio.sleep(1.0)  # past the client's read timeout
        writer.write(with_length())
        return True

    async with serving(answer) as server, model(server.url, kind, read_timeout=0.2) as client:
        with pytest.raises(UpstreamTimeout):
            await answer_of(client)
        assert text_of(await answer_of(client)) == "Hello there"
    assert server.connections == 2


@pytest.mark.parametrize("kind", CLIENTS)
async def test_silence_mid_stream_is_a_timeout(kind: str) -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, __: int) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n" + STREAM_HEAD)
        await asyncio.sleep(1.0)
        return False

    async with serving(answer) as server, model(server.url, kind, read_timeout=0.2) as client:
        with pytest.raises(UpstreamTimeout):
            await answer_of(client, incremental=True)


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"partial',
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
    ids=["hang-up before a response", "hang-up mid-body", "garbage"],
)
async def test_a_broken_response_is_an_upstream_error_not_a_hang(kind: str, data: bytes) -> None:
    async with serving(reply(data, keep=False)) as server, model(server.url, kind) as client:
        with pytest.raises(UpstreamError) as caught:
            await asyncio.wait_for(answer_of(client), 5)
    assert type(caught.value) is UpstreamError


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("framing", ["content-length", "chunked", "until-close"])
async def test_a_connection_dropped_mid_stream_is_an_upstream_error(kind: str, framing: str) -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    data = {
        "content-length": head + b"content-length: 100000\r\n\r\n" + STREAM_HEAD,
        "chunked": head + b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(STREAM_HEAD), STREAM_HEAD),
        "until-close": head + b"\r\n" + STREAM_HEAD,  # a body that ends with the connection, before message_stop
    }[framing]
    async with serving(reply(data, keep=False)) as server, model(server.url, kind) as client:
        events: list[LLMEvent] = []
        with pytest.raises(UpstreamError) as caught:
            async with client.stream(request(incremental=True)) as stream:
                events += [event async for event in stream]
    assert type(caught.value) is UpstreamError
    assert "ended before it was complete" in caught.value.message or "dropped" in caught.value.message


@pytest.mark.parametrize("kind", CLIENTS)
async def test_nothing_listening_is_an_upstream_error(kind: str) -> None:
    async with serving(reply(b"")) as server:
        url = server.url
    async with model(url, kind) as client:
        with pytest.raises(UpstreamError, match="Could not reach"):
            await answer_of(client)


@pytest.mark.parametrize("kind", CLIENTS)
async def test_the_connection_cap_queues_callers(kind: str) -> None:
    async with serving(reply(with_length(), delay=0.3)) as server, model(server.url, kind, max_connections=1) as client:
        first, second = await asyncio.gather(answer_of(client), answer_of(client))
        assert text_of(first) == text_of(second) == "Hello there"
    assert server.connections == 1  # the second waited for the first's connection


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_cancelled_stream_closes_its_connection_and_frees_its_slot(kind: str) -> None:
    """A client that leaves cancels its turn: the upstream connection must close, not linger."""
    started = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: 100000\r\n\r\n")
            writer.write(STREAM_HEAD)
            started.set()
            await asyncio.wait_for(reader.read(), 10)  # the model keeps thinking: only our hang-up ends this
            return False
        writer.write(with_length())
        return True

    async with serving(answer) as server, model(server.url, kind, max_connections=1) as client:
        task = asyncio.create_task(answer_of(client, incremental=True))
        await started.wait()
        await asyncio.sleep(0.05)
        server.closed.clear()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 2)  # the server saw the connection end
        # The one slot is free again, and the half-read connection was not put back.
        assert text_of(await asyncio.wait_for(answer_of(client), 2)) == "Hello there"
    assert server.connections == 2


@pytest.mark.parametrize("kind", CLIENTS)
async def test_a_proxy_in_the_environment_is_followed(
    kind: ModelHttpClientName, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    async with _http_client(10, kind) as http:
        assert any(mount is not None for mount in http._mounts.values())  # the proxy, as httpx2 mounts it


@pytest.mark.parametrize("kind", CLIENTS)
@pytest.mark.parametrize("prefix", ["", "/", "/gateway/anthropic", "/gateway/anthropic/"])
async def test_the_messages_url_keeps_the_base_urls_path(kind: str, prefix: str) -> None:
    """The call goes to the base URL's path + /v1/messages, as the SDK joins them (a gateway's
    prefix kept), streamed or not."""
    async with serving(reply(with_length())) as server, model(server.url + prefix, kind) as client:
        assert text_of(await answer_of(client)) == "Hello there"
    async with serving(reply(with_length(STREAM_HEAD + STREAM_TAIL, content_type=b"text/event-stream"))) as server:
        async with model(server.url + prefix, kind) as client:
            assert text_of(await answer_of(client, incremental=True)) == "Hello"
    path = prefix.rstrip("/") + "/v1/messages"
    assert server.request_lines == [b"POST %s HTTP/1.1" % path.encode()]


async def test_the_default_client_is_the_sdks_aiohttp_one() -> None:
    settings = Settings(anthropic_api_key="k", llm_provider="anthropic")
    assert settings.llm_http_client == "aiohttp"
    client = AnthropicModel(settings)
    assert isinstance(client._client._client, anthropic.DefaultAioHttpClient)
    await client.aclose()


async def test_sdk_spans_are_off_unless_the_environment_sets_up_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(("OTEL_", "ANTHROPIC_OPEN_TELEMETRY"))]:
        monkeypatch.delenv(name)
    settings = Settings(anthropic_api_key="k", llm_provider="anthropic")
    for env, spans in ((None, False), ("OTEL_SERVICE_NAME", True)):
        if env:
            monkeypatch.setenv(env, "agentchat")
        client = AnthropicModel(settings)
        assert client._client.open_telemetry["traces"]["enabled"] is spans
        await client.aclose()


async def test_the_default_model_is_not_one_the_sdk_calls_deprecated() -> None:
    """The SDK warns on every call to a model past its deprecation date: a default that ages out fails here."""
    async with serving(reply(with_length())) as server:
        http = _http_client(1)
        async with anthropic.AsyncAnthropic(api_key="k", base_url=server.url, max_retries=0, http_client=http) as sdk:
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                await sdk.messages.create(
                    model=DEFAULT_MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
