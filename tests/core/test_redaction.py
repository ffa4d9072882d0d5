"""Secrets stay out of the logs: lines rendered by the real logging set-up, as they reach stderr."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from app.core.config import Settings
from app.core.db import create_engine
from app.core.logging import configure_logging

OPENAI_KEY = "sk-abcdefghijklmnopqrstuvwxyz0123456789ABCD"
OPENAI_PROJECT_KEY = "sk-proj-Abc123_def456-GHI789jklMNO012pqrSTU345"
ANTHROPIC_KEY = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"
OUR_KEY = "ak_0123abcd_" + "Z" * 43
SECRETS = ["hunter2", "s3cr3t-redis", "abcdefghijklmnopqrstuvwxyz", "Abc123_def456", "ZZZZZZZZZZZZZZZZ", "tok-value"]


@pytest.fixture
def lines(capsys: pytest.CaptureFixture[str]) -> Any:
    """Configure logging as the app does (JSON), then read back what was written to stderr."""
    configure_logging("json", "INFO")
    capsys.readouterr()

    def read() -> list[dict[str, Any]]:
        err = capsys.readouterr().err
        return [json.loads(line) for line in err.splitlines() if line.startswith("{")]

    return read


def assert_no_secret(line: dict[str, Any]) -> None:
    rendered = json.dumps(line)
    for secret in SECRETS:
        assert secret not in rendered, (secret, rendered)


@pytest.mark.parametrize(
    ("message", "shown"),
    [
        (f"calling OpenAI with {OPENAI_KEY}", "calling OpenAI with sk-***"),
        (f"project key {OPENAI_PROJECT_KEY} refused", "project key sk-proj-*** refused"),
        (f"anthropic {ANTHROPIC_KEY}", "anthropic sk-ant-***"),
        (f"key {OUR_KEY}", "key ak_0123abcd***"),
        (
            "connect postgresql+asyncpg://agent:hunter2@db:5432/app failed",
            "connect postgresql+asyncpg://agent:***@db:5432/app failed",
        ),
        ("redis redis://:s3cr3t-redis@redis:6379/0 down", "redis redis://:***@redis:6379/0 down"),
        ("rediss://default:hunter2@cache.example:6380", "rediss://default:***@cache.example:6380"),
        ("header Authorization: Bearer tok-value", "header Authorization: Bearer ***"),
        ("authorization: bEaReR tok-value", "authorization: bEaReR ***"),  # any case, as HTTP allows
    ],
)
def test_secrets_in_messages_are_masked(lines: Any, message: str, shown: str) -> None:
    structlog.get_logger("test").info(message)
    logging.getLogger("some.library").warning("%s", message)  # stdlib lines take the same path
    ours, theirs = lines()
    assert ours["event"] == theirs["event"] == shown


def test_ordinary_text_is_left_alone(lines: Any) -> None:
    plain = "task-manager risk-assessment https://example.com/a/b?x=1 user@example.com 12:30"
    structlog.get_logger("test").info(plain, input_tokens=12, output_tokens=3, key_id="k-1", model="claude")
    (line,) = lines()
    assert line["event"] == plain
    assert (line["input_tokens"], line["output_tokens"], line["key_id"], line["model"]) == (12, 3, "k-1", "claude")


@pytest.mark.parametrize(
    "field",
    [
        "openai_api_key",
        "anthropic_api_key",
        "api_key",
        "github_token",
        "refresh_token",
        "token",
        "password",
        "db_password",
        "client_secret",
        "secret_key",
        "authorization",
        "Authorization",
        "cookie",
        "set-cookie",
        "Set-Cookie",
        "x-api-key",
    ],
)
def test_secret_fields_are_blanked_whatever_their_value(lines: Any, field: str) -> None:
    structlog.get_logger("test").info("event", **{field: "hunter2"})
    (line,) = lines()
    assert line[field] == "***"
    assert_no_secret(line)


def test_nested_values_are_redacted(lines: Any) -> None:
    structlog.get_logger("test").info(
        "upstream.request",
        request={
            "headers": {"Authorization": "Bearer tok-value", "Cookie": "sid=hunter2", "Accept": "text/html"},
            "config": {"database_url": "postgresql://u:hunter2@h/db", "nested": [{"password": "hunter2"}]},
            "keys": [OPENAI_KEY, ("x-api-key", "hunter2"), ["set-cookie", "sid=hunter2"]],
        },
        attempts=[{"client_secret": "hunter2", "status": 500}],
    )
    (line,) = lines()
    assert_no_secret(line)
    request = line["request"]
    assert request["headers"] == {"Authorization": "***", "Cookie": "***", "Accept": "text/html"}
    assert request["config"] == {"database_url": "postgresql://u:***@h/db", "nested": [{"password": "***"}]}
    assert request["keys"] == ["sk-***", ["x-api-key", "***"], ["set-cookie", "***"]]
    assert line["attempts"] == [{"client_secret": "***", "status": 500}]


def test_exceptions_are_redacted(lines: Any) -> None:
    try:
        raise RuntimeError(f"could not reach redis://:s3cr3t-redis@redis:6379 with {OPENAI_PROJECT_KEY}")
    except RuntimeError:
        structlog.get_logger("test").exception("boom")
    (line,) = lines()
    assert_no_secret(line)
    assert "redis://:***@redis:6379" in line["exception"]


async def test_sqlite_errors_hide_bound_parameters(tmp_path: Path) -> None:
    """Bound parameters are user content (messages): never in an error, hence never in a log."""
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db"))
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                await conn.execute(text("INSERT INTO no_such_table VALUES (:message)"), {"message": "my diary hunter2"})
    finally:
        await engine.dispose()
    assert "hunter2" not in str(caught.value)
    assert "hidden" in str(caught.value)
