"""CONVERSATION_RETENTION_DAYS (issue #27): conversations untouched for longer are deleted in small
batches, with their messages, by one replica at a time; the others stay."""

from __future__ import annotations

import uuid
from datetime import timedelta

import httpx
from sqlalchemy import func, select, update

from app.conversations.retention import LOCK, sweep_retention
from app.core.config import Settings
from app.models import Conversation, Message
from app.models.base import utcnow
from app.state import Resources
from tests.fixtures.app import make_key, running_app
from tests.helpers import eventually


async def _open(client: httpx.AsyncClient, auth: dict[str, str], text: str) -> uuid.UUID:
    r = await client.post("/chat", json={"message": text}, headers=auth)
    assert r.status_code == 200, r.text
    return uuid.UUID(r.json()["conversation_id"])


async def _age(state: Resources, conversation_id: uuid.UUID, days: int) -> None:
    async with state.sessions() as session, session.begin():
        when = utcnow() - timedelta(days=days)
        await session.execute(update(Conversation).where(Conversation.id == conversation_id).values(updated_at=when))


async def _counts(state: Resources, conversation_id: uuid.UUID) -> tuple[int, int]:
    async with state.sessions() as session:
        conversations = await session.scalar(select(func.count()).where(Conversation.id == conversation_id))
        messages = await session.scalar(select(func.count()).where(Message.conversation_id == conversation_id))
    return int(conversations or 0), int(messages or 0)


async def test_old_conversations_are_deleted_in_batches_and_recent_ones_stay(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources
) -> None:
    old = [await _open(client, auth, f"old {n}") for n in range(3)]
    recent = await _open(client, auth, "recent")
    continued = await _open(client, auth, "old, then continued")
    for conversation_id in [*old, continued]:
        await _age(state, conversation_id, days=40)
    r = await client.post("/chat", json={"message": "back", "conversation_id": str(continued)}, headers=auth)
    assert r.status_code == 200  # touched again: no longer old

    assert await sweep_retention(state.sessions, state.locks, 30, batch=2) == 3  # two batches
    for conversation_id in old:
        assert await _counts(state, conversation_id) == (0, 0)  # its messages went with it
        assert (await client.get(f"/conversations/{conversation_id}", headers=auth)).status_code == 404
    assert await _counts(state, recent) == (1, 2)
    assert await _counts(state, continued) == (1, 4)
    assert await sweep_retention(state.sessions, state.locks, 30) == 0


async def test_one_replica_sweeps_at_a_time(client: httpx.AsyncClient, auth: dict[str, str], state: Resources) -> None:
    conversation_id = await _open(client, auth, "old")
    await _age(state, conversation_id, days=40)
    held = await state.locks.acquire(LOCK)  # another replica is sweeping
    assert held is not None
    try:
        assert await sweep_retention(state.sessions, state.locks, 30) is None
        assert await _counts(state, conversation_id) == (1, 2)
    finally:
        await state.locks.release(held)
    assert await sweep_retention(state.sessions, state.locks, 30) == 1


async def test_the_lifespan_sweeps_when_retention_is_set(settings: Settings) -> None:
    on = settings.model_copy(update={"conversation_retention_days": 30, "retention_sweep_seconds": 0.05})
    async with running_app(on) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id = await _open(client, auth, "old")
        await _age(state, conversation_id, days=31)

        async def gone() -> bool:
            return await _counts(state, conversation_id) == (0, 0)

        await eventually(gone, timeout=5)
