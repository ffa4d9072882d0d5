"""`python -m tests.services`: say in one line which test service is unreachable, and exit 1."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
from redis.asyncio import Redis

DEFAULT_DB = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def admin_database_url() -> str:
    return os.environ.get("TEST_DATABASE_URL", DEFAULT_DB)


def redis_url() -> str:
    return os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS)


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def problems() -> list[str]:
    found = []
    try:
        conn = await asyncpg.connect(asyncpg_dsn(admin_database_url()), timeout=5)
        await conn.close()
    except Exception as exc:
        found.append(
            f"Postgres at TEST_DATABASE_URL={admin_database_url()} is unreachable ({type(exc).__name__}: {exc})"
        )
    redis = Redis.from_url(redis_url(), socket_connect_timeout=5)
    try:
        await redis.ping()
    except Exception as exc:
        found.append(f"Redis at TEST_REDIS_URL={redis_url()} is unreachable ({type(exc).__name__}: {exc})")
    finally:
        await redis.aclose()
    return found


if __name__ == "__main__":
    issues = asyncio.run(problems())
    for line in issues:
        print(f"tests need real services: {line}", file=sys.stderr)
    if not issues:
        print("Postgres and Redis are reachable.")
    sys.exit(1 if issues else 0)
