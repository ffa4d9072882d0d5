"""Redis pools for the process, or None when REDIS_URL is unset (in-process fallbacks).

Two clients, two bounded pools: the main one for short commands (locks, limits, idempotency,
the run mirror), and one for followers' blocking reads (`XREAD BLOCK`), which hold a connection
for as long as a run is quiet. Idle followers therefore never take the connections that locks and
limits need.
"""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from app.core.config import Settings

SOCKET_TIMEOUT = 5.0
# A follower's blocking read returns (empty) well before the socket time-out would call the quiet
# connection dead; the follower then checks the run and blocks again.
FOLLOW_BLOCK_SECONDS = 2.5
HEALTH_CHECK_SECONDS = 15


def _retry_once() -> Retry:
    """A command whose pooled connection turns out dead (Redis restarted, a proxy or CLIENT KILL
    closed it) is sent once more on a fresh connection, so the first command after a restart does
    not fail. Connection errors only: a time-out means Redis is slow or unreachable, and a retry
    would double the wait. A retried write may have been applied already; the writes that matter
    (lock, idempotency claim) recognise their own token on the retry."""
    return Retry(ExponentialBackoff(cap=0.25, base=0.025), retries=1, supported_errors=(RedisConnectionError,))


def _pool(url: str, max_connections: int, client_name: str) -> Redis:
    # Blocking: at the cap, a command waits briefly for a free connection instead of failing.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=2,
        socket_connect_timeout=2,
        socket_timeout=SOCKET_TIMEOUT,
        # A connection idle this long is PINGed (and replaced if dead) before its next command.
        health_check_interval=HEALTH_CHECK_SECONDS,
        retry=_retry_once(),
        client_name=client_name,
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


def create_redis(settings: Settings) -> Redis | None:
    if settings.redis_url is None:
        return None
    return _pool(settings.redis_url, settings.redis_max_connections, settings.app_name)


def create_follower_redis(settings: Settings) -> Redis | None:
    """The pool for followers' blocking reads: one connection per follower of another replica's run."""
    if settings.redis_url is None:
        return None
    return _pool(settings.redis_url, settings.redis_follower_connections, settings.app_name)
