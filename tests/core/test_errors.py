"""One envelope for every error, no stack trace to the client, the traceback in the log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from app.core.config import Settings
from app.main import create_app
from tests.fixtures.app import running_app


def assert_envelope(r: httpx.Response, status: int, type_: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == type_
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text


async def test_http_errors_use_the_envelope(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    assert_envelope(await client.get("/no-such-route", headers=auth), 404, "not_found")
    assert_envelope(await client.put("/chat", headers=auth), 405, "method_not_allowed")
    assert_envelope(await client.post("/chat", json={"message": 1}, headers=auth), 422, "validation_error")
    assert_envelope(await client.get("/conversations", headers={}), 401, "unauthorized")
    r = await client.get("/conversations?limit=0", headers=auth)
    assert_envelope(r, 422, "validation_error")
    assert "limit" in r.json()["error"]["message"]


async def test_oversized_bodies_are_413(settings: Settings) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})
    async with running_app(small) as (_, _, client):
        r = await client.post("/chat", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert_envelope(r, 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        # No Content-Length: the limit is enforced while the body streams in.
        r = await client.post("/chat", content=chunks(), headers={"content-type": "application/json"})
        assert_envelope(r, 413, "payload_too_large")


async def test_unexpected_exception_is_500_envelope_and_logged(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    app: FastAPI = create_app(settings)

    @app.get("/explode")
    async def explode() -> None:
        raise RuntimeError("secret internals sk-ant-abcdefghijklmnop")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/explode", headers={"X-Request-ID": "boom-1"})
    assert_envelope(r, 500, "internal_error")
    assert "secret internals" not in r.text
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    crash = next(line for line in lines if line["event"] == "http.unhandled_error")
    assert crash["request_id"] == "boom-1"
    assert "RuntimeError" in crash["exception"]
    assert "sk-ant-abcdefghijklmnop" not in json.dumps(lines)  # secrets masked even in tracebacks
