"""The migration that gives messages their parents adds a nullable column and rewrites nothing: the
rows from before it keep a NULL parent, which the branches read as one branch (each message below
the one before it, compaction rows aside); it reverses cleanly. On SQLite and Postgres, through
Alembic as deployments run it."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no stubs or py.typed
import pytest

from app.conversations.branches import parents
from tests.fixtures.services import admin_database_url, asyncpg_dsn
from tests.migrations_check import _admin, alembic

BEFORE = "4b6d8f0a2c31"
NOW = "2026-12-07 10:00:00+00:00"


def rows() -> tuple[uuid.UUID, list[tuple[uuid.UUID, str]]]:
    conversation = uuid.UUID(int=1)
    roles = ["user", "assistant", "user", "assistant", "summary", "user", "assistant"]
    return conversation, [(uuid.UUID(int=100 + n), role) for n, role in enumerate(roles)]


@dataclass(frozen=True)
class Row:
    id: uuid.UUID
    parent_id: uuid.UUID | None
    role: str


def read_as_branches(found: dict[uuid.UUID, uuid.UUID | None], roles: dict[uuid.UUID, str]) -> Any:
    assert all(parent is None for parent in found.values())  # nothing was rewritten
    return parents([Row(message_id, parent, roles[message_id]) for message_id, parent in found.items()])


def expected(messages: list[tuple[uuid.UUID, str]]) -> dict[uuid.UUID, uuid.UUID | None]:
    parents: dict[uuid.UUID, uuid.UUID | None] = {}
    previous = None
    for message_id, role in messages:
        parents[message_id] = previous
        if role != "summary":
            previous = message_id
    return parents


def test_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/m.db"
    alembic(url, "upgrade", BEFORE)
    conversation, messages = rows()
    with sqlite3.connect(tmp_path / "m.db") as db:  # no foreign keys enforced: no key row needed
        db.execute(
            "INSERT INTO conversations (id, owner_id, title, created_at, updated_at) VALUES (?, ?, 't', ?, ?)",
            (conversation.hex, uuid.UUID(int=2).hex, NOW, NOW),
        )
        for message_id, role in messages:
            db.execute(
                "INSERT INTO messages (id, conversation_id, role, content, status, input_tokens, output_tokens,"
                " cache_read_tokens, cache_creation_tokens, created_at, updated_at)"
                " VALUES (?, ?, ?, '[]', 'complete', 0, 0, 0, 0, ?, ?)",
                (message_id.hex, conversation.hex, role, NOW, NOW),
            )
    alembic(url, "upgrade", "head")
    with sqlite3.connect(tmp_path / "m.db") as db:
        found = {
            uuid.UUID(hex=m): uuid.UUID(hex=p) if p else None
            for m, p in db.execute("SELECT id, parent_id FROM messages")
        }
    assert read_as_branches(found, dict(messages)) == expected(messages)
    alembic(url, "downgrade", BEFORE)


@pytest.fixture
def pg_url() -> Iterator[str]:
    import asyncio

    name = f"agentchat_parents_{uuid.uuid4().hex[:8]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_database_url().rsplit("/", 1)[0] + f"/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_postgres(pg_url: str) -> None:
    alembic(pg_url, "upgrade", BEFORE)
    conversation, messages = rows()
    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        owner = uuid.UUID(int=2)
        await conn.execute("SET session_replication_role = replica")  # no key row needed for this check
        await conn.execute(
            "INSERT INTO conversations (id, owner_id, title, created_at, updated_at)"
            " VALUES ($1, $2, 't', now(), now())",
            conversation,
            owner,
        )
        for message_id, role in messages:
            await conn.execute(
                "INSERT INTO messages (id, conversation_id, role, content, status, input_tokens, output_tokens,"
                " cache_read_tokens, cache_creation_tokens, created_at, updated_at)"
                " VALUES ($1, $2, $3, '[]', 'complete', 0, 0, 0, 0, now(), now())",
                message_id,
                conversation,
                role,
            )
    finally:
        await conn.close()
    alembic(pg_url, "upgrade", "head")
    conn = await asyncpg.connect(asyncpg_dsn(pg_url))
    try:
        found = {row["id"]: row["parent_id"] for row in await conn.fetch("SELECT id, parent_id FROM messages")}
    finally:
        await conn.close()
    assert read_as_branches(found, dict(messages)) == expected(messages)
    alembic(pg_url, "downgrade", BEFORE)
