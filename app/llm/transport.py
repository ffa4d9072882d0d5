"""A lean HTTP/1.1 transport for the model client: asyncio protocols and httptools' C parser.

The SDK stays the client (auth, headers, retries, status errors); this is only what carries its
bytes, through httpx2's public transport interface. The default transport (httpcore2 on anyio,
h11) costs more CPU per model call than the rest of a JSON turn: a cancel scope per read and
write, a socket poll per pooled connection, a pure-Python parser. Here a call is one write and
a parser fed from `data_received`.

What it does: keep-alive pooling per origin with a connection cap, TLS, content-length, chunked
and read-until-close bodies, streamed bodies with flow control, httpx2's connect/read/write/pool
timeouts and exceptions (so the SDK's retries and our error mapping behave as before). What it
does not: proxies (`proxied()` tells the caller to keep httpx2's client), HTTP/2, upgrades.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import httpx2

Origin = tuple[bytes, bytes, int]
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_HIGH_WATER = 256 * 1024  # buffered body bytes before the socket stops being read
KEEPALIVE_EXPIRY = 5.0  # seconds idle before a connection is closed rather than reused (httpcore2's default)


class ModelHttpClient(httpx2.AsyncClient):
    """The SDK's `http_client`: `send()` hands the SDK's request straight to the transport.

    httpx2's own `send()` runs an auth flow, a redirect loop, event hooks and a cookie jar per
    call; the SDK sets its own auth headers, and the Messages API neither redirects nor sets
    cookies worth keeping, so here a call skips all four.
    """

    def __init__(self, transport: httpx2.AsyncBaseTransport, **kwargs: Any) -> None:
        super().__init__(transport=transport, **kwargs)
        self._direct = transport

    async def send(self, request: httpx2.Request, *, stream: bool = False, **_: Any) -> httpx2.Response:
        if self.is_closed:
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        response = await self._direct.handle_async_request(request)
        response.request = request
        if not stream:
            try:
                await response.aread()
            except BaseException:
                await response.aclose()
                raise
        return response


def proxied() -> bool:
    """Whether the environment routes HTTP(S) through a proxy, which this transport can't do."""
    return any(scheme in ("http", "https", "all") for scheme in urllib.request.getproxies())


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; parses one response at a time."""

    # The response being read (set by `_reset_response`, once per request).
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    headers_done: bool
    body: deque[bytes]
    buffered: int
    complete: bool
    keep_alive: bool
    _until_close: bool

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._parser: Any = None
        self.requests = 0  # sent on this connection
        self.idle_since = 0.0
        self.got_bytes = False  # of the current response
        self._reset_response()

    # ------------------------------------------------------------------ protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self._parser is None or self.complete:  # bytes while idle: the connection can't be reused
            self.close()
            return
        self.got_bytes = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = httpx2.RemoteProtocolError(f"Invalid HTTP response from the model provider: {exc}")
            self.close()
        if self.buffered > _HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._end_of_stream()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None and self.error is None:
            self.error = httpx2.ReadError(str(exc) or type(exc).__name__)
        self._end_of_stream()

    def _end_of_stream(self) -> None:
        if self._parser is not None and self.headers_done and not self.complete and self._until_close:
            self.complete = True  # a body without length or chunking ends with the connection
            self.keep_alive = False
        self.closed = True
        self._wake()

    # ------------------------------------------------------------------ parser callbacks

    def on_status(self, status: bytes) -> None:
        self.reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an interim response: the real one follows
            self.headers, self.status = [], 0
            return
        names = {name.lower() for name, _ in self.headers}
        self._until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.headers_done:
            self.complete = True
            self.keep_alive = self._parser.should_keep_alive()

    # ------------------------------------------------------------------ used by the transport

    def _reset_response(self) -> None:
        self.status, self.reason, self.headers, self.headers_done = 0, b"", [], False
        self.body, self.buffered = deque(), 0
        self.complete = self.keep_alive = self._until_close = False

    def reusable(self, now: float) -> bool:
        return not self.closed and self._parser is None and now - self.idle_since < KEEPALIVE_EXPIRY

    @property
    def stale(self) -> bool:
        """A kept-alive connection that ended before a byte of the answer: the server had closed it
        (an idle timeout racing our request), so the request went unheard and may go again."""
        return self.requests > 1 and self.closed and not self.got_bytes

    def send(self, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        assert self._parser is None
        self._reset_response()
        self.requests += 1
        self.got_bytes = False
        self._parser = httptools.HttpResponseParser(self)
        self.transport.writelines((head, body))

    async def wait(self, read_timeout: float | None) -> None:
        """Until the parser has more to give, the connection ends, or `read_timeout` passes (ReadTimeout)."""
        if self.error is not None:
            raise self.error
        if self.closed:
            if not self.complete:
                where = "mid-response" if self.headers_done else "without a response"
                raise httpx2.RemoteProtocolError(f"The model provider closed the connection {where}.")
            return
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(read_timeout, _expire, waiter) if read_timeout is not None else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()
        if self.error is not None:
            raise self.error

    def take_body(self) -> bytes:
        chunk = b"".join(self.body) if len(self.body) > 1 else self.body.popleft()
        self.body.clear()
        self.buffered = 0
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()
        return chunk

    def finish(self) -> bool:
        """The response is read: True if the connection can carry another request."""
        self._parser = None
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(httpx2.ReadTimeout("The model provider did not answer in time."))


class _Body(httpx2.AsyncByteStream):
    """A response body as it arrives; closing it returns the connection to the pool or closes it."""

    def __init__(self, transport: LeanTransport, conn: _Connection, read_timeout: float | None) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._read_timeout = read_timeout

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        while True:
            if conn.body:
                yield conn.take_body()
            elif conn.complete:
                return
            else:
                await conn.wait(self._read_timeout)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._transport.release(conn, reuse=conn.finish())


class LeanTransport(httpx2.AsyncBaseTransport):
    def __init__(self, *, max_connections: int, max_keepalive: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._ssl = ssl_context
        self._idle: dict[Origin, deque[_Connection]] = {}
        self._open = 0  # connections in use or idle
        self._waiters: deque[asyncio.Future[None]] = deque()  # callers waiting for a connection
        self._closed = False

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        timeouts = request.extensions.get("timeout", {})
        url = request.url
        origin = (url.raw_scheme, url.raw_host, url.port or _DEFAULT_PORTS.get(url.raw_scheme, 80))
        try:
            body = request.content
        except httpx2.RequestNotRead:
            body = await request.aread()
        lines = [request.method.encode(), b" ", url.raw_path, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"\r\n")
        head, read_timeout, retried = b"".join(lines), timeouts.get("read"), False
        while True:
            conn = await self._connection(origin, timeouts)
            try:
                conn.send(head, body)
                while not conn.headers_done:
                    await conn.wait(read_timeout)
            except httpx2.TransportError:
                self.release(conn, reuse=False)
                if conn.stale and not retried:
                    retried = True  # it went unheard: once more, on another connection
                    continue
                raise
            except BaseException:
                self.release(conn, reuse=False)
                raise
            break
        return httpx2.Response(
            conn.status,
            headers=conn.headers,
            stream=_Body(self, conn, read_timeout),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": conn.reason},
        )

    async def _connection(self, origin: Origin, timeouts: dict[str, float | None]) -> _Connection:
        """An idle connection to `origin`, or a new one while under the cap, or wait for either."""
        timeout = timeouts.get("pool")
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while True:
            if self._closed:
                raise httpx2.ConnectError("The model client is closed.")
            idle, now = self._idle.get(origin), time.monotonic()
            while idle:
                conn = idle.pop()  # the most recently used: the least likely to have been closed by the server
                if conn.reusable(now):
                    return conn
                conn.close()
                self._open -= 1
            if self._open < self._max_connections or self._evict_idle():
                self._open += 1
                try:
                    return await self._connect(origin, timeouts.get("connect"))
                except BaseException:
                    self._open -= 1
                    self._notify()
                    raise
            await self._wait_for_release(deadline)

    async def _wait_for_release(self, deadline: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            raise httpx2.PoolTimeout("No connection to the model provider came free in time.") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._notify()  # woken as we were cancelled: wake the next one instead
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def _evict_idle(self) -> bool:
        """At the cap with idle connections to another origin: close one, so a new one may open."""
        for conns in self._idle.values():
            if conns:
                conns.popleft().close()
                self._open -= 1
                return True
        return False

    async def _connect(self, origin: Origin, connect_timeout: float | None) -> _Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context = None
        if scheme == b"https":
            context = self._ssl = self._ssl or httpx2.create_ssl_context()
        conn = _Connection(origin)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(
                    lambda: conn, host.decode("ascii"), port, ssl=context,
                    server_hostname=host.decode("ascii") if context else None,
                )  # fmt: skip
        except TimeoutError:
            raise httpx2.ConnectTimeout("Connecting to the model provider timed out.") from None
        except OSError as exc:
            raise httpx2.ConnectError(f"Could not connect to the model provider: {exc}") from exc
        return conn

    def release(self, conn: _Connection, *, reuse: bool) -> None:
        idle = self._idle.setdefault(conn.origin, deque())
        if reuse and not self._closed and len(idle) < self._max_keepalive:
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()
            self._open -= 1
        self._notify()

    def _notify(self) -> None:
        """Wake one caller waiting for a connection (it looks again: idle, or room to open one)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
                self._open -= 1
        self._idle.clear()
        self._notify()
