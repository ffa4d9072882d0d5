"""DOCS_ENABLED: the interactive docs and the schema are on for local use and can be switched off."""

from __future__ import annotations

import httpx
import pytest

from app.core.config import Settings
from tests.fixtures.app import running_app

DOC_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")


def test_the_setting_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(_env_file=None).docs_enabled is True
    monkeypatch.setenv("DOCS_ENABLED", "false")
    assert Settings().docs_enabled is False


async def test_docs_are_served_by_default(client: httpx.AsyncClient) -> None:
    for path in DOC_PATHS:
        assert (await client.get(path)).status_code == 200, path


async def test_docs_switched_off_are_not_found(settings: Settings) -> None:
    async with running_app(settings.model_copy(update={"docs_enabled": False})) as (_, _, client):
        for path in DOC_PATHS:
            r = await client.get(path)
            assert r.status_code == 404, path
            assert r.json()["error"]["type"] == "not_found"
        # Everything else is unchanged.
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/")).status_code == 200
