"""Every migration upgrades and downgrades on both databases."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no stubs or py.typed
from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from tests.fixtures.database import run_migrations
from tests.fixtures.services import admin_database_url, asyncpg_dsn

TABLES = {"api_keys", "conversations", "messages", "memories"}


async def tables(url: str) -> set[str]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    return names - {"alembic_version"}


async def roundtrip(url: str) -> None:
    await asyncio.to_thread(run_migrations, url)
    assert TABLES <= await tables(url)
    await asyncio.to_thread(run_migrations, url, "base", down=True)
    assert await tables(url) == set()
    await asyncio.to_thread(run_migrations, url)
    assert TABLES <= await tables(url)


async def test_up_down_up_on_sqlite(tmp_path: Path) -> None:
    await roundtrip(f"sqlite+aiosqlite:///{tmp_path}/m.db")


async def test_up_down_up_on_postgres() -> None:
    name = f"agentchat_mig_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(asyncpg_dsn(admin_database_url()))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            await roundtrip(admin_database_url().rsplit("/", 1)[0] + f"/{name}")
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
