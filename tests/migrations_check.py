"""`python -m tests.migrations_check`: upgrade head, then `alembic check` (no drift), on both databases."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no stubs or py.typed

from tests.fixtures.services import admin_database_url, asyncpg_dsn


def alembic(database_url: str, *args: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    subprocess.run([sys.executable, "-m", "alembic", *args], check=True, env=env, capture_output=True, text=True)


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_database_url()))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> int:
    name = f"agentchat_migcheck_{uuid.uuid4().hex[:8]}"
    admin = admin_database_url()
    pg_url = admin.rsplit("/", 1)[0] + f"/{name}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for url in (pg_url, f"sqlite+aiosqlite:///{tmp}/check.db"):
                try:
                    alembic(url, "upgrade", "head")
                    alembic(url, "check")
                except subprocess.CalledProcessError as exc:
                    print(f"migrations failed on {url.split(':')[0]}: {exc.stderr or exc.stdout}", file=sys.stderr)
                    return 1
                print(f"ok: upgrade head + check on {url.split('+')[0]}")
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
