"""API keys: bearer auth, hashed storage, revocation within the cache bound, and the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from sqlalchemy import func, select, text, update

from app.auth.cache import KeyCache
from app.auth.keys import hash_key
from app.core.config import Settings
from app.main import create_app
from app.models import ApiKey, Message
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.helpers import eventually, live_server, sse_events, statements_sent


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


async def test_keys_are_stored_hashed(state: Resources, api_key: str) -> None:
    async with state.sessions() as session:
        rows = (await session.execute(select(ApiKey))).scalars().all()
    assert len(rows) == 1
    assert rows[0].key_hash == hash_key(api_key)
    assert api_key.startswith(rows[0].prefix + "_")
    # The secret part is stored nowhere: not in any column of the key's row (the whole row as text).
    secret = api_key.removeprefix(rows[0].prefix + "_")
    async with state.sessions() as session:
        row_text = (await session.execute(text("SELECT api_keys::text FROM api_keys"))).scalar_one()
    assert rows[0].prefix in row_text  # what is shown is there…
    assert secret not in row_text  # …and the secret is not


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
    prefix = "_".join(key.split("_")[:2])
    assert prefix in listed.stdout
    assert key.removeprefix(prefix + "_") not in listed.stdout  # the secret (it may contain "_" itself)
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


async def test_cli_refuses_to_revoke_an_ambiguous_prefix(settings: Settings, state: Resources) -> None:
    """Prefixes are 8 hex characters: two keys may share one, and revoking by it must not take both."""
    prefix = "ak_0badcafe"
    async with state.sessions() as session, session.begin():
        rows = [ApiKey(name=f"twin {n}", prefix=prefix, key_hash=hash_key(f"{prefix}_secret{n}")) for n in range(2)]
        session.add_all(rows)
        await session.flush()
        first, second = (str(row.id) for row in rows)

    async def active() -> set[str]:
        async with state.sessions() as session:
            stmt = select(ApiKey.id).where(ApiKey.prefix == prefix, ApiKey.revoked_at.is_(None))
            return {str(key_id) for key_id in (await session.execute(stmt)).scalars()}

    ambiguous = cli(settings, "revoke-key", prefix)
    assert ambiguous.returncode == 1
    assert "2 active keys have the prefix ak_0badcafe; none revoked" in ambiguous.stderr
    assert first in ambiguous.stderr
    assert second in ambiguous.stderr
    assert await active() == {first, second}

    by_id = cli(settings, "revoke-key", first)
    assert by_id.returncode == 0, by_id.stderr
    assert await active() == {second}

    # Now only one active key has the prefix: it is the one meant.
    by_prefix = cli(settings, "revoke-key", prefix)
    assert by_prefix.returncode == 0, by_prefix.stderr
    assert await active() == set()


async def test_a_revoked_key_stops_its_running_turns_at_the_next_model_step(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    settings = settings.model_copy(update={"auth_cache_seconds": 0.2})
    step = '[[tool:calculator {"expression": "2+2"}]] [[tool_chain:8]] [[slow:0.05]]'
    async with live_server(create_app(settings)) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        state = live.state
        key = await make_key(state)
        headers = {"Authorization": f"Bearer {key}"}
        async with client.stream("POST", "/chat", json={"message": step, "stream": True}, headers=headers) as r:
            seen = ""
            async for chunk in r.aiter_text():
                seen += chunk
                if "event: tool_result" in seen and "revoked" not in seen:
                    async with state.sessions() as session, session.begin():
                        await session.execute(update(ApiKey).values(revoked_at=func.now()))
                    seen += "revoked"
        events = sse_events(seen.replace("revoked", ""))
        assert events[-1]["event"] == "error"
        assert events[-1]["data"]["error"]["type"] == "unauthorized"
        assert llm_server.state.request_count < 8  # stopped at a step, not after the whole chain


async def test_a_revoked_key_stops_a_stream_mid_call_and_the_partial_answer_is_recorded(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    # One model call of 80 deltas, 50 ms apart (4 s): revoked after the 5th, it must not run on to the end.
    settings = settings.model_copy(update={"auth_cache_seconds": 0.2})
    async with live_server(create_app(settings)) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        state = live.state
        headers = {"Authorization": f"Bearer {await make_key(state)}"}
        body = {"message": "[[words:80]] [[slow:0.05]]", "stream": True}
        async with client.stream("POST", "/chat", json=body, headers=headers) as r:
            seen = ""
            async for chunk in r.aiter_text():
                seen += chunk
                if seen.count("event: delta") >= 5 and "revoked" not in seen:
                    async with state.sessions() as session, session.begin():
                        await session.execute(update(ApiKey).values(revoked_at=func.now()))
                    seen += "revoked"
        events = sse_events(seen.replace("revoked", ""))
        assert events[-1]["event"] == "error"
        assert events[-1]["data"]["error"]["type"] == "unauthorized"
        deltas = [e for e in events if e["event"] == "delta"]
        assert 5 <= len(deltas) < 40, len(deltas)  # within AUTH_CACHE_SECONDS (+ a delta), not all 80
        assert llm_server.state.request_count == 1  # one call, cut short
        async with state.sessions() as session:
            answer = (await session.execute(select(Message).where(Message.role == "assistant"))).scalar_one()
        assert answer.status == "error"
        assert answer.error is not None
        assert answer.error["type"] == "unauthorized"
        recorded = "".join(block["text"] for block in answer.content if block["type"] == "text")
        assert recorded  # the partial answer, kept: what the client was sent
        assert recorded == "".join(d["data"]["text"] for d in deltas)


async def test_a_burst_with_a_key_not_yet_cached_reads_it_once(
    client: httpx.AsyncClient, state: Resources, api_key: str
) -> None:
    auth = {"Authorization": f"Bearer {api_key}"}
    assert (await client.get("/conversations", headers=auth)).status_code == 200  # cached now
    before = statements_sent(state)
    assert (await client.get("/conversations", headers=auth)).status_code == 200
    per_request = statements_sent(state) - before  # the route's own, with the key cached

    state.keys.clear()  # as on a fresh replica, or when the entry expires under load
    before = statements_sent(state)
    answers = await asyncio.gather(*(client.get("/conversations", headers=auth) for _ in range(20)))
    assert [r.status_code for r in answers] == [200] * 20
    assert statements_sent(state) - before == 20 * per_request + 1  # one read of the key for all twenty


async def test_a_shared_key_read_outlives_a_caller_that_left_and_failures_are_not_kept() -> None:
    cache = KeyCache(ttl_seconds=5, max_entries=10)
    release, reads = asyncio.Event(), []
    key_id = uuid.uuid4()

    async def read() -> tuple[uuid.UUID, str, tuple[str, ...] | None] | None:
        reads.append(1)
        await release.wait()
        return key_id, "k", None

    first = asyncio.create_task(cache.get_or_read("h", read))
    second = asyncio.create_task(cache.get_or_read("h", read))
    await asyncio.sleep(0.05)
    first.cancel()  # its client hung up mid-read
    release.set()
    assert await second == (key_id, "k", None)
    assert first.cancelled()
    assert reads == [1]
    assert cache.get("h") == (key_id, "k", None)
    assert cache.known_active(key_id)

    async def failing() -> tuple[uuid.UUID, str, tuple[str, ...] | None] | None:
        raise ConnectionResetError("database went away")

    with pytest.raises(ConnectionResetError):
        await cache.get_or_read("other", failing)
    assert await cache.get_or_read("other", read) == (key_id, "k", None)  # the next request reads again
