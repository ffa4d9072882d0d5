"""Idempotency-Key for POST /chat: a retry of the same request returns the stored answer.

A key is claimed with a short-lived `running` marker (so a crashed replica frees it), then
replaced by the finished answer, kept for IDEMPOTENCY_TTL_SECONDS. Only successful answers are
kept: a retry after a failure runs the turn again. With Redis this holds across replicas;
without it, per process.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from redis.asyncio import Redis

Outcome = Literal["new", "replay", "running", "mismatch"]


@dataclass(frozen=True, slots=True)
class Claim:
    outcome: Outcome
    response: dict[str, Any] | None = None


def fingerprint(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


class IdempotencyStore(Protocol):
    async def claim(self, owner: uuid.UUID, key: str, fp: str, running_ttl: float) -> Claim: ...
    async def complete(self, owner: uuid.UUID, key: str, fp: str, response: dict[str, Any]) -> None: ...
    async def abandon(self, owner: uuid.UUID, key: str) -> None: ...


def _decide(stored: dict[str, Any], fp: str) -> Claim:
    if stored["fp"] != fp:
        return Claim("mismatch")
    if stored["state"] == "done":
        return Claim("replay", stored["response"])
    return Claim("running")


class RedisIdempotency:
    def __init__(self, redis: Redis, prefix: str, ttl: int) -> None:
        self.redis, self.prefix, self.ttl = redis, prefix + "idem:", ttl

    def _key(self, owner: uuid.UUID, key: str) -> str:
        return f"{self.prefix}{owner}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def claim(self, owner: uuid.UUID, key: str, fp: str, running_ttl: float) -> Claim:
        name = self._key(owner, key)
        # The claim's own id: a SET retried on a fresh connection (app/core/redis.py) may find the
        # marker its first, unanswered attempt wrote, and must not take it for another request's.
        claim_id = secrets.token_hex(8)
        marker = json.dumps({"fp": fp, "state": "running", "claim": claim_id})
        if await self.redis.set(name, marker, nx=True, px=int(running_ttl * 1000)):
            return Claim("new")
        raw = await self.redis.get(name)
        if raw is None:  # expired between the two calls: claim again
            return await self.claim(owner, key, fp, running_ttl)
        stored = json.loads(raw)
        if stored.get("claim") == claim_id:
            return Claim("new")
        return _decide(stored, fp)

    async def complete(self, owner: uuid.UUID, key: str, fp: str, response: dict[str, Any]) -> None:
        value = json.dumps({"fp": fp, "state": "done", "response": response})
        await self.redis.set(self._key(owner, key), value, ex=self.ttl)

    async def abandon(self, owner: uuid.UUID, key: str) -> None:
        await self.redis.delete(self._key(owner, key))


class LocalIdempotency:
    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self._entries: dict[tuple[uuid.UUID, str], tuple[dict[str, Any], float]] = {}

    async def claim(self, owner: uuid.UUID, key: str, fp: str, running_ttl: float) -> Claim:
        now = time.monotonic()
        self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
        entry = self._entries.get((owner, key))
        if entry is None:
            self._entries[(owner, key)] = ({"fp": fp, "state": "running"}, now + running_ttl)
            return Claim("new")
        return _decide(entry[0], fp)

    async def complete(self, owner: uuid.UUID, key: str, fp: str, response: dict[str, Any]) -> None:
        state = {"fp": fp, "state": "done", "response": response}
        self._entries[(owner, key)] = (state, time.monotonic() + self.ttl)

    async def abandon(self, owner: uuid.UUID, key: str) -> None:
        self._entries.pop((owner, key), None)
