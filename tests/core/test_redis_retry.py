"""A command retried on a fresh connection (app/core/redis.py) may have been applied the first
time, its answer lost with the connection. The writes that matter recognise their own work."""

from __future__ import annotations

import json
import uuid

import pytest
from redis.asyncio import Redis

from app.core.config import Settings
from app.core.locks import RedisLocks
from app.turns.idempotency import RedisIdempotency


async def test_a_retried_lock_acquire_finds_its_own_token(
    redis_client: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    manager = RedisLocks(redis_client, settings.redis_key_prefix, ttl=5)
    monkeypatch.setattr("app.core.locks.secrets.token_hex", lambda _: "mine")
    # The first SET went through; its reply was lost, and the retry's SET NX finds the key taken.
    await redis_client.set(f"{settings.redis_key_prefix}lock:conversation:c", "mine", px=5000)
    lock = await manager.acquire("conversation:c")
    assert lock is not None  # ours, not "busy" (which would wedge the conversation for a TTL)
    assert await manager.renew(lock)
    # Someone else's token is still someone else's.
    await redis_client.set(f"{settings.redis_key_prefix}lock:conversation:d", "theirs", px=5000)
    assert await manager.acquire("conversation:d") is None


async def test_a_retried_idempotency_claim_finds_its_own_marker(
    redis_client: Redis, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisIdempotency(redis_client, settings.redis_key_prefix, ttl=60)
    owner = uuid.uuid4()
    monkeypatch.setattr("app.turns.idempotency.secrets.token_hex", lambda _: "claim-1")
    marker = {"fp": "fp", "state": "running", "claim": "claim-1"}
    await redis_client.set(store._key(owner, "k"), json.dumps(marker), px=5000)
    assert (await store.claim(owner, "k", "fp", 5)).outcome == "new"  # ours, not "still running"
    monkeypatch.setattr("app.turns.idempotency.secrets.token_hex", lambda _: "claim-2")
    assert (await store.claim(owner, "k", "fp", 5)).outcome == "running"  # another request's
