"""One Redis pool for the process, or None when REDIS_URL is unset (in-process fallbacks)."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis

from app.core.config import Settings


def create_redis(settings: Settings) -> Redis | None:
    if settings.redis_url is None:
        return None
    # Blocking: at the cap, a command waits briefly for a free connection instead of failing.
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=2,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,
        client_name=settings.app_name,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both
