"""X-Request-ID: accepted when sane, made otherwise, echoed everywhere, on every log line."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from app.core.middleware import sane_request_id


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (b"abc-123", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"has space", False),
        (b"bad\x01ctl", False),
        (b"", False),
        ("caf\u00e9".encode(), False),
    ],
)
def test_sane_request_ids(raw: bytes, kept: bool) -> None:
    assert (sane_request_id(raw) is not None) is kept


async def test_request_id_is_echoed_or_made(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": "client-chosen-1"})
    assert r.headers["x-request-id"] == "client-chosen-1"
    r = await client.get("/healthz", headers={"X-Request-ID": "x" * 300})
    assert r.headers["x-request-id"] != "x" * 300
    assert len(r.headers["x-request-id"]) == 32
    r = await client.get("/nope", headers={"X-Request-ID": "err-1"})
    assert r.headers["x-request-id"] == "err-1"
    assert r.json()["error"]["request_id"] == "err-1"


async def test_every_log_line_of_a_request_carries_its_id(
    client: httpx.AsyncClient, auth: dict[str, str], capsys: pytest.CaptureFixture[str], api_key: str
) -> None:
    sa_logger = logging.getLogger("sqlalchemy.engine.Engine")
    sa_logger.setLevel(logging.INFO)
    try:
        capsys.readouterr()
        r = await client.post("/chat", json={"message": "log me"}, headers={**auth, "X-Request-ID": "trace-me-42"})
        assert r.status_code == 200
    finally:
        sa_logger.setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines, err
    loggers = {line["logger"] for line in lines}
    assert {"app.turns.turn", "sqlalchemy.engine.Engine"} <= loggers
    assert all(line.get("request_id") == "trace-me-42" for line in lines)
    # The key never reaches a log line, not even through SQL parameters.
    assert api_key not in err
    assert api_key.split("_", 2)[2] not in err
