"""The model client: its lean transport (app/llm/transport.py) against a scripted HTTP/1.1 server.

Each test's server reads one request at a time and answers with the bytes the test gives, so
what a real provider (or a broken proxy in front of it) may do on the wire is exercised: framing
of every kind, keep-alive and its loss, interim responses, silence, hang-ups and garbage.
The SDK-level behaviour (retries, status errors, streams) is covered through the fake model in
the rest of the suite, which reaches it over this same transport.
"""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anthropic
import httpx2
import pytest

from app.core.config import DEFAULT_MODEL, Settings
from app.llm import transport as transport_module
from app.llm.anthropic import AnthropicModel, _http_client
from app.llm.transport import LeanTransport, ModelHttpClient

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


def with_length(body: bytes = BODY, *, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
        % (
            len(body),
            extra,
        )
        + body
    )


def chunked(body: bytes = BODY, size: int = 7) -> bytes:
    parts = [body[i : i + size] for i in range(0, len(body), size)]
    framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
        + framed
        + b"0\r\n\r\n"
    )


Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class Server:
    """Counts connections and requests; `answer(reader, writer, n)` replies to request n, False = hang up."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests = 0
        self.bodies: list[bytes] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                self.bodies.append(await reader.readexactly(length))
                self.requests += 1
                if not await self.answer(reader, writer, self.requests):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


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
async def client(
    url: str, *, max_connections: int = 10, timeout: httpx2.Timeout | None = None
) -> AsyncIterator[httpx2.AsyncClient]:
    transport = LeanTransport(max_connections=max_connections, max_keepalive=10)
    async with httpx2.AsyncClient(base_url=url, transport=transport, timeout=timeout or httpx2.Timeout(5.0)) as http:
        yield http


async def test_the_sdk_reuses_one_connection_for_sequential_calls() -> None:
    async with serving(reply(with_length())) as server:
        http = anthropic.DefaultAsyncHttpxClient(transport=LeanTransport(max_connections=10, max_keepalive=10))
        async with anthropic.AsyncAnthropic(api_key="k", base_url=server.url, max_retries=0, http_client=http) as sdk:
            for _ in range(5):
                raw = await sdk.messages.with_raw_response.create(
                    model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
                )
                assert json.loads(await raw.read())["content"][0]["text"] == "Hello there"
    assert (server.connections, server.requests) == (1, 5)
    assert json.loads(server.bodies[0])["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "framing",
    [with_length(), chunked(), b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + BODY],
    ids=["content-length", "chunked", "until-close"],
)
async def test_every_body_framing_reads_whole(framing: bytes) -> None:
    until_close = b"content-length" not in framing and b"chunked" not in framing
    async with serving(reply(framing, keep=not until_close)) as server, client(server.url) as http:
        for _ in range(2):
            response = await http.post("/v1/messages", content=b"{}")
            assert response.status_code == 200
            assert response.json() == MESSAGE
    assert server.connections == (2 if until_close else 1)  # a body that ends with the connection can't reuse it


async def test_a_streamed_body_arrives_intact_through_flow_control() -> None:
    big = b"data: " + b"x" * (3 * 1024 * 1024) + b"\n\n"  # past the read-pause mark several times over
    async with serving(reply(chunked(big, size=16 * 1024))) as server, client(server.url) as http:
        async with http.stream("POST", "/v1/messages", content=b"{}") as response:
            received = b"".join([chunk async for chunk in response.aiter_bytes()])
        assert received == big
        assert (await http.post("/v1/messages", content=b"{}")).status_code == 200
    assert server.connections == 1


async def test_connection_close_and_an_idle_hang_up_are_followed_by_a_new_connection() -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(with_length(extra=b"connection: close\r\n") if n == 1 else with_length())
        return n != 1 and n != 2  # close after the first (announced) and the second (silently)

    async with serving(answer) as server, client(server.url) as http:
        for _ in range(3):
            assert (await http.post("/v1/messages", content=b"{}")).json() == MESSAGE
            await asyncio.sleep(0.05)  # let the hang-up reach us while the connection is idle
    assert server.connections == 3


async def test_interim_responses_are_skipped() -> None:
    answer = reply(b"HTTP/1.1 100 Continue\r\n\r\n" + with_length())
    async with serving(answer) as server, client(server.url) as http:
        response = await http.post("/v1/messages", content=b"{}")
        assert (response.status_code, response.json()) == (200, MESSAGE)


async def test_error_statuses_come_through_with_their_bodies() -> None:
    error = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}).encode()
    data = b"HTTP/1.1 529 Overloaded\r\ncontent-length: %d\r\nretry-after: 3\r\n\r\n%s" % (len(error), error)
    async with serving(reply(data)) as server:
        http = anthropic.DefaultAsyncHttpxClient(transport=LeanTransport(max_connections=10, max_keepalive=10))
        async with anthropic.AsyncAnthropic(api_key="k", base_url=server.url, max_retries=0, http_client=http) as sdk:
            with pytest.raises(anthropic.APIStatusError) as caught:
                await sdk.messages.create(
                    model="claude-test", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
    assert caught.value.status_code == 529
    assert caught.value.response.headers["retry-after"] == "3"


async def test_silence_is_a_read_timeout_and_the_connection_is_not_reused() -> None:
    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            await asyncio.sleep(1.0)  # past the client's read timeout
        writer.write(with_length())
        return True

    async with serving(answer) as server, client(server.url, timeout=httpx2.Timeout(0.2)) as http:
        with pytest.raises(httpx2.ReadTimeout):
            await http.post("/v1/messages", content=b"{}")
        assert (await http.post("/v1/messages", content=b"{}")).json() == MESSAGE
    assert server.connections == 2


@pytest.mark.parametrize(
    "data",
    [b"", b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"partial', b"NOT HTTP AT ALL\r\n\r\n"],
    ids=["hang-up before a response", "hang-up mid-body", "garbage"],
)
async def test_a_broken_response_is_a_transport_error_not_a_hang(data: bytes) -> None:
    async with serving(reply(data, keep=False)) as server, client(server.url) as http:
        with pytest.raises((httpx2.RemoteProtocolError, httpx2.ReadError)):
            await http.post("/v1/messages", content=b"{}")


async def test_nothing_listening_is_a_connect_error() -> None:
    async with serving(reply(b"")) as server:
        url = server.url
    async with client(url) as http:
        with pytest.raises(httpx2.ConnectError):
            await http.post("/v1/messages", content=b"{}")


async def test_the_connection_cap_queues_callers_and_times_out_as_a_pool_timeout() -> None:
    async with serving(reply(with_length(), delay=0.3)) as server:
        async with client(server.url, max_connections=1) as http:
            first, second = await asyncio.gather(*(http.post("/v1/messages", content=b"{}") for _ in range(2)))
            assert first.json() == second.json() == MESSAGE
        assert server.connections == 1  # the second waited for the first's connection

        async with client(server.url, max_connections=1, timeout=httpx2.Timeout(5.0, pool=0.05)) as http:
            results = await asyncio.gather(
                *(http.post("/v1/messages", content=b"{}") for _ in range(2)), return_exceptions=True
            )
        assert sorted(type(r).__name__ for r in results) == ["PoolTimeout", "Response"]


async def test_a_cancelled_read_closes_its_connection_and_frees_its_slot() -> None:
    started = asyncio.Event()

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 1:
            writer.write(b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"half')
            started.set()
            await asyncio.sleep(0.5)
            return False
        writer.write(with_length())
        return True

    async with serving(answer) as server, client(server.url, max_connections=1) as http:

        async def read() -> None:
            async with http.stream("POST", "/v1/messages", content=b"{}") as response:
                await response.aread()

        task = asyncio.create_task(read())
        await started.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The one slot is free again, and the half-read connection was not put back.
        assert (await asyncio.wait_for(http.post("/v1/messages", content=b"{}"), 2)).json() == MESSAGE
    assert server.connections == 2


async def test_a_proxy_in_the_environment_keeps_httpx_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(_http_client(10), ModelHttpClient)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    async with _http_client(10) as http:
        assert not isinstance(http, ModelHttpClient)
        assert any(mount is not None for mount in http._mounts.values())  # the proxy, as httpx2 mounts it


async def test_the_sdk_client_sends_straight_to_the_transport() -> None:
    """No redirect is followed and no cookie kept: neither is part of the Messages API."""
    redirect = (
        b"HTTP/1.1 307 Temporary Redirect\r\nlocation: /elsewhere\r\nset-cookie: a=b\r\ncontent-length: 0\r\n\r\n"
    )
    async with serving(reply(redirect)) as server:
        async with ModelHttpClient(LeanTransport(max_connections=2, max_keepalive=2), base_url=server.url) as http:
            response = await http.send(http.build_request("POST", "/v1/messages", content=b"{}"))
            assert (response.status_code, response.request.url.path) == (307, "/v1/messages")
            assert not http.cookies
    assert server.requests == 1


async def test_a_request_unheard_on_a_kept_alive_connection_goes_again_once() -> None:
    """The server's idle timeout can close a connection as our request leaves on it: no byte of an
    answer comes back, so the request goes again on a new connection; twice would be a real fault."""

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        if n == 2:
            return False  # hang up on the second request, unanswered
        writer.write(with_length())
        return True

    async with serving(answer) as server, client(server.url) as http:
        assert (await http.post("/v1/messages", content=b"{}")).json() == MESSAGE
        assert (await http.post("/v1/messages", content=b"second")).json() == MESSAGE
    assert (server.connections, server.requests, server.bodies[1:]) == (2, 3, [b"second", b"second"])


async def test_an_unanswered_first_request_is_not_sent_again() -> None:
    async with serving(reply(b"", keep=False)) as server, client(server.url) as http:
        with pytest.raises(httpx2.RemoteProtocolError, match="without a response"):
            await http.post("/v1/messages", content=b"{}")
    assert server.requests == 1


async def test_a_connection_idle_past_the_expiry_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport_module, "KEEPALIVE_EXPIRY", 0.05)
    async with serving(reply(with_length())) as server, client(server.url) as http:
        for _ in range(2):
            assert (await http.post("/v1/messages", content=b"{}")).json() == MESSAGE
            await asyncio.sleep(0.1)
    assert server.connections == 2


async def test_sdk_spans_are_off_unless_the_environment_sets_up_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith(("OTEL_", "ANTHROPIC_OPEN_TELEMETRY"))]:
        monkeypatch.delenv(name)
    settings = Settings(anthropic_api_key="k", llm_provider="anthropic")  # type: ignore[arg-type]
    for env, spans in ((None, False), ("OTEL_SERVICE_NAME", True)):
        if env:
            monkeypatch.setenv(env, "agentchat")
        model = AnthropicModel(settings)
        assert model._client.open_telemetry["traces"]["enabled"] is spans
        await model.aclose()


async def test_the_default_model_is_not_one_the_sdk_calls_deprecated() -> None:
    """The SDK warns on every call to a model past its deprecation date: a default that ages out fails here."""
    async with serving(reply(with_length())) as server:
        http = ModelHttpClient(LeanTransport(max_connections=1, max_keepalive=1))
        async with anthropic.AsyncAnthropic(api_key="k", base_url=server.url, max_retries=0, http_client=http) as sdk:
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                await sdk.messages.create(
                    model=DEFAULT_MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
