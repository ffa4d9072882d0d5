"""How many followers of runs this replica serves at once: per key, and through Redis in all.

A follower (`GET /runs/{id}/events`) is a long-lived stream. One key may hold at most
RUN_MAX_FOLLOWERS_PER_KEY of them here (429 beyond, with Retry-After); followers of runs on other
replicas each hold a connection of the followers' Redis pool, so there are at most
REDIS_FOLLOWER_CONNECTIONS of those (503 service_busy beyond) — refused up front, rather than
failing mid-stream when the pool is empty. Counted per replica: that is where the connections are.
"""

from __future__ import annotations

import uuid
from collections import Counter

from app.core.errors import ServiceBusy
from app.runs.errors import TooManyFollowers


class Ticket:
    """One admitted follower; `release()` (idempotent) when its stream ends."""

    __slots__ = ("followers", "owner_id", "remote", "released")

    def __init__(self, followers: Followers, owner_id: uuid.UUID, remote: bool) -> None:
        self.followers, self.owner_id, self.remote, self.released = followers, owner_id, remote, False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.followers._release(self)


class Followers:
    def __init__(self, per_key: int, remote: int) -> None:
        self.per_key, self.max_remote = per_key, remote
        self.by_key: Counter[uuid.UUID] = Counter()
        self.remote = 0

    def admit(self, owner_id: uuid.UUID, *, remote: bool) -> Ticket:
        if self.by_key[owner_id] >= self.per_key:
            raise TooManyFollowers(
                f"At most {self.per_key} run streams may be open at once for a key.", headers={"Retry-After": "5"}
            )
        if remote and self.remote >= self.max_remote:
            raise ServiceBusy("This replica follows as many runs as it can; retry shortly.")
        self.by_key[owner_id] += 1
        self.remote += remote
        return Ticket(self, owner_id, remote)

    def _release(self, ticket: Ticket) -> None:
        self.by_key[ticket.owner_id] -= 1
        if self.by_key[ticket.owner_id] <= 0:
            del self.by_key[ticket.owner_id]
        self.remote -= ticket.remote
