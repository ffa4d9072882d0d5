"""Connections killed while idle in the pool are replaced before a request can trip over them."""

from __future__ import annotations

import asyncio

import pytest

from app.core import db
from app.core.config import Settings
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.fixtures.services import admin_database_url
from tests.helpers import eventually
from tests.resilience.server import kill_pg_connections, pg_connections


async def test_idle_connections_killed_by_the_server_are_replaced(
    settings: Settings, llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shorten the idle threshold (a constant of ours), not the logic under test.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.2)
    async with running_app(settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        for _ in range(3):
            assert (await client.post("/chat", json={"message": "warm"}, headers=auth)).status_code == 200
        assert sum((await pg_connections(admin_database_url(), settings.app_name)).values()) > 0
        await asyncio.sleep(0.3)  # idle long enough to be checked on the next checkout
        assert await kill_pg_connections(admin_database_url(), settings.app_name) > 0

        async def all_gone() -> bool:  # pg_terminate_backend only signals: wait until they have exited
            return not await pg_connections(admin_database_url(), settings.app_name)

        await eventually(all_gone, timeout=5)
        for _ in range(3):
            r = await client.post("/chat", json={"message": "after the kill"}, headers=auth)
            assert r.status_code == 200, r.text
