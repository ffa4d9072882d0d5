"""/healthz touches nothing; /readyz names what is down."""

from __future__ import annotations

import httpx

from app.core.config import Settings
from testkit.net import free_port
from tests.fixtures.app import running_app


async def test_health_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"] == {"database": "ok", "redis": "ok"}


async def test_ready_names_postgres_when_it_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/x"})
    async with running_app(down) as (_, _, client):
        assert (await client.get("/healthz")).status_code == 200
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.headers["retry-after"]
        body = r.json()
        assert body["error"]["type"] == "not_ready"
        assert "database" in body["error"]["message"]
        assert body["checks"]["redis"] == "ok"
        assert body["checks"]["database"].startswith("failed")
        # A request that needs the database fails cleanly with 503, not 500.
        r = await client.get("/conversations", headers={"Authorization": "Bearer ak_x_y"})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "database_unavailable"


async def test_ready_names_redis_when_it_is_down(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with running_app(down) as (_, _, client):
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"database": "ok", "redis": "failed: ConnectionError"}
        assert "redis" in r.json()["error"]["message"]
