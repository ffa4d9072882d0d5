"""`Authorization: Bearer <key>` on every protected route."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request
from redis.exceptions import RedisError

from app.auth.limits import Limits
from app.auth.repository import ApiKeyRepository
from app.core.deps import SessionsDep
from app.core.errors import RateLimited, Unauthorized

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an API key, which is also the owner of everything it creates."""

    key_id: uuid.UUID
    name: str


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def require_api_key(request: Request, sessions: SessionsDep) -> Principal:
    token = _bearer(request)
    if token is None:
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
    # A short session of its own: the connection is back in the pool before the handler runs.
    async with sessions() as session:
        found = await ApiKeyRepository(session).find_active(token)
    if found is None:
        raise Unauthorized("Invalid or revoked API key.", headers={"WWW-Authenticate": "Bearer"})
    key_id, name = found
    structlog.contextvars.bind_contextvars(key_id=str(key_id))
    await enforce_request_limit(request, key_id)
    return Principal(key_id=key_id, name=name)


async def enforce_request_limit(request: Request, owner: uuid.UUID) -> None:
    limits: Limits = request.state.limits
    try:
        decision = await limits.hit_request(owner)
    except (RedisError, OSError) as exc:
        # Fail open: a Redis outage must not take chat down with it (documented).
        log.warning("limits.unavailable", error=type(exc).__name__)
        return
    if decision is not None and not decision.allowed:
        log.info("limits.refused", limit="requests_per_minute")
        request.state.metrics.limit_refusals.labels("requests_per_minute").inc()
        raise RateLimited(f"More than {decision.limit} requests this minute.", headers=decision.headers())


CurrentPrincipal = Annotated[Principal, Depends(require_api_key)]
