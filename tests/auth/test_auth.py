"""API keys: bearer auth, hashed storage, revocation within the cache bound, and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
from sqlalchemy import select

from app.auth.keys import hash_key
from app.core.config import Settings
from app.models import ApiKey
from app.state import State
from tests.conftest import running_app
from tests.helpers import eventually


async def test_missing_or_wrong_keys_are_401(client: httpx.AsyncClient, api_key: str) -> None:
    for headers in [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer ak_wrong_key"},
        {"Authorization": api_key},
    ]:
        r = await client.get("/conversations", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    ok = await client.get("/conversations", headers={"Authorization": f"bearer {api_key}"})
    assert ok.status_code == 200


async def test_health_needs_no_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200


async def test_keys_are_stored_hashed(state: State, api_key: str) -> None:
    async with state["sessions"]() as session:
        rows = (await session.execute(select(ApiKey))).scalars().all()
    assert len(rows) == 1
    assert rows[0].key_hash == hash_key(api_key)
    assert api_key not in rows[0].key_hash
    assert api_key.startswith(rows[0].prefix + "_")


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": settings.database_url, "LOG_FORMAT": "json"}
    return subprocess.run([sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=60)


async def test_cli_create_list_revoke(settings: Settings) -> None:
    # Known keys are cached by hash for AUTH_CACHE_SECONDS: that is the bound on revocation.
    settings = settings.model_copy(update={"auth_cache_seconds": 0.5})
    async with running_app(settings) as (_, _, client):
        await _create_list_revoke(settings, client)


async def _create_list_revoke(settings: Settings, client: httpx.AsyncClient) -> None:
    created = cli(settings, "create-key", "--name", "ci-user")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    assert (await client.get("/conversations", headers=headers)).status_code == 200

    listed = cli(settings, "list-keys")
    assert "ci-user" in listed.stdout
    assert "active" in listed.stdout
    assert key not in listed.stdout
    assert key.split("_")[2] not in listed.stdout

    prefix = "_".join(key.split("_")[:2])
    revoked = cli(settings, "revoke-key", prefix)
    assert revoked.returncode == 0, revoked.stderr
    revoked_at = time.monotonic()

    async def refused() -> bool:
        return (await client.get("/conversations", headers=headers)).status_code == 401

    await eventually(refused, timeout=2.0, interval=0.05)
    assert time.monotonic() - revoked_at <= settings.auth_cache_seconds + 0.5
    r = await client.get("/conversations", headers=headers)
    assert r.json()["error"]["type"] == "unauthorized"
    assert cli(settings, "revoke-key", prefix).returncode == 1
    assert "revoked" in cli(settings, "list-keys").stdout
