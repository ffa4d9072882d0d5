"""Configuration: public names, defaults, and one clear line on misconfiguration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.core.config import DEFAULT_MODEL, Settings

CLEAN = {
    k: v
    for k, v in os.environ.items()
    if not k.startswith(("DATABASE_", "REDIS_", "ANTHROPIC_", "LLM_", "DB_", "LOG_", "OPENAI_"))
}


def start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env={**CLEAN, **env}, capture_output=True, text=True, timeout=60)


def test_defaults_are_the_embedded_mode() -> None:
    s = Settings(_env_file=None)
    assert s.database_url == "sqlite+aiosqlite:///./agentchat.db"
    assert s.redis_url is None
    assert s.provider == "offline"
    assert s.llm_model == DEFAULT_MODEL
    assert (s.db_pool_size, s.db_max_overflow, s.db_pool_timeout) == (10, 5, 10)
    assert s.log_level == "INFO"


def test_provider_follows_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    assert Settings().provider == "anthropic"
    monkeypatch.setenv("LLM_PROVIDER", "offline")
    assert Settings().provider == "offline"
    monkeypatch.setenv("LLM_PROVIDER", "")  # compose passes empty strings for unset values
    assert Settings().provider == "anthropic"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"DB_POOL_SIZE": "lots"}, "DB_POOL_SIZE"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"REDIS_URL": "http://nope"}, "REDIS_URL"),
        ({"LLM_PROVIDER": "anthropic"}, "ANTHROPIC_API_KEY"),
        ({"LLM_HTTP_CLIENT": "curl"}, "LLM_HTTP_CLIENT"),
    ],
)
def test_misconfiguration_is_one_clear_line(env: dict[str, str], name: str) -> None:
    for args in (
        ["-c", "from app.main import create_app; create_app()"],
        ["-m", "uvicorn", "app.main:app", "--port", "0"],
    ):
        result = start(env, *args)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert name in lines[0]
        assert "configuration error" in lines[0]
        assert "Traceback" not in result.stderr


def test_importing_the_app_module_creates_nothing() -> None:
    # A broken configuration is only noticed when the app is built, not on import.
    result = start({"DATABASE_URL": "mysql://x"}, "-c", "import app.main, app.core.db, app.llm.anthropic")
    assert result.returncode == 0, result.stderr
