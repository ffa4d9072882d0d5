"""Pure-ASGI middleware: request IDs, body size limit, request metrics and the last-chance error envelope.

One layer, not several: each layer wraps `send` and `receive` again for every message of every
response, and a relayed stream is many messages.

Our own rather than asgi-correlation-id because the same outermost layer must also render the
500 envelope (Starlette's ServerErrorMiddleware sits outside user middleware, so its response
would miss the X-Request-ID header and the contextvars) and cap streamed request bodies.
"""

from __future__ import annotations

import json
import os
import time

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.context import request_id_var
from app.core.db import Transactions
from app.core.errors import ServiceBusy, db_unavailable, envelope, is_db_unavailable
from app.core.metrics import Metrics
from app.core.telemetry import mark_request

log = structlog.get_logger("app.http")

REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID_LEN = 128


def sane_request_id(raw: bytes | None) -> str | None:
    """Accept a client's ID only if it is short, printable ASCII (no spaces or controls)."""
    if not raw or len(raw) > MAX_REQUEST_ID_LEN:
        return None
    if not all(0x21 <= b <= 0x7E for b in raw):
        return None
    return raw.decode("ascii")


class BodyTooLarge(Exception):
    pass


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        metrics: Metrics,
        large_bodies: tuple[tuple[str, ...], int] = ((), 0),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        # Paths whose bodies may be larger (uploads, inline files), and their limit.
        self.large_paths, self.large_body_bytes = large_bodies
        self.http_latency = metrics.http_latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = sane_request_id(headers.get(REQUEST_ID_HEADER)) or os.urandom(16).hex()
        token = request_id_var.set(request_id)
        structlog.contextvars.bind_contextvars(request_id=request_id)
        mark_request(request_id)
        started = time.perf_counter()
        status = 500  # until a response says otherwise
        response_started = False

        limit = self.large_body_bytes if scope["path"] in self.large_paths else self.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._send_error(send, request_id, 413, "payload_too_large", "Request body is too large.")
            self.http_latency.labels(scope["method"], "unmatched", "413").observe(time.perf_counter() - started)
            self._reset(token)
            return

        received = 0
        too_large = False

        async def limited_receive() -> Message:
            nonlocal received, too_large, status, response_started
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Answer now: the app may turn the exception into its own 400, which we drop.
                    if not response_started:
                        too_large, response_started, status = True, True, 413
                        await self._send_error(send, request_id, 413, "payload_too_large", "Request body is too large.")
                    raise BodyTooLarge
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if too_large:
                return
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [
                    *(h for h in message.get("headers", []) if h[0].lower() != REQUEST_ID_HEADER),
                    (REQUEST_ID_HEADER, request_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_id)
        except BodyTooLarge:
            pass  # already answered
        except Exception as exc:
            # Cancellation is a BaseException and passes through untouched.
            if is_db_unavailable(exc):
                error = db_unavailable(exc)
                busy = isinstance(error, ServiceBusy)
                log.warning("http.database_unavailable", error=type(exc).__name__, path=scope["path"], busy=busy)
                if not response_started:
                    status = error.status_code
                    retry_after = error.headers.get("Retry-After")
                    await self._send_error(send, request_id, status, error.type, error.message, retry_after)
            else:
                log.exception("http.unhandled_error", path=scope["path"])
                if not response_started:
                    status = 500
                    await self._send_error(send, request_id, 500, "internal_error", "Internal server error.")
        finally:
            elapsed = time.perf_counter() - started
            # Labelled by route template, never the raw path (unbounded label values).
            template = getattr(scope.get("route"), "path", None) or "unmatched"
            self.http_latency.labels(scope["method"], template, str(status)).observe(elapsed)
            log.debug(
                "http.request.finished",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round(elapsed * 1000, 2),
            )
            Transactions.end_request(scope)  # the response is sent: its transaction opener is closed
            self._reset(token)

    @staticmethod
    def _reset(token: object) -> None:
        structlog.contextvars.unbind_contextvars("request_id")
        request_id_var.reset(token)  # type: ignore[arg-type]

    @staticmethod
    async def _send_error(
        send: Send, request_id: str, status: int, type_: str, message: str, retry_after: str | None = None
    ) -> None:
        body = json.dumps(envelope(type_, message)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (REQUEST_ID_HEADER, request_id.encode()),
        ]
        if retry_after:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
