"""`Authorization: Bearer <key>` on every protected route."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from redis.exceptions import RedisError

from app.auth.cache import Found
from app.auth.keys import hash_key
from app.auth.repository import find_active
from app.core.errors import RateLimited, Unauthorized
from app.state import Resources, ResourcesDep

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an API key, which owns everything it creates (its id is the `owner_id` of
    conversations, messages, memories and runs)."""

    owner_id: uuid.UUID
    name: str
    agents: tuple[str, ...] | None = None  # the agents this key may use; None: all of them


# Declares the scheme in the OpenAPI schema (client generators and API testers read it); with
# auto_error=False a missing or malformed header is our own 401 envelope, not FastAPI's bare one.
_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer ak_…`.")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def require_api_key(credentials: BearerDep, resources: ResourcesDep) -> Principal:
    token = credentials.credentials if credentials is not None else ""
    if not token:
        raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
    key_hash = hash_key(token)

    async def read() -> Found | None:
        # One statement of its own: the connection is back in the pool before the handler runs.
        async with resources.db.statement() as conn:
            return await find_active(conn, key_hash)

    found = await resources.keys.get_or_read(key_hash, read)
    if found is None:
        raise Unauthorized("Invalid or revoked API key.", headers={"WWW-Authenticate": "Bearer"})
    key_id, name, agents = found
    structlog.contextvars.bind_contextvars(key_id=str(key_id))
    await enforce_request_limit(resources, key_id)
    return Principal(owner_id=key_id, name=name, agents=agents)


async def enforce_request_limit(resources: Resources, owner: uuid.UUID) -> None:
    try:
        decision = await resources.limits.hit_request(owner)
    except (RedisError, OSError) as exc:
        # Fail open: a Redis outage must not take chat down with it (documented).
        log.warning("limits.unavailable", error=type(exc).__name__)
        return
    if decision is not None and not decision.allowed:
        log.info("limits.refused", limit="requests_per_minute")
        resources.metrics.limit_refusals.labels("requests_per_minute").inc()
        raise RateLimited(f"More than {decision.limit} requests this minute.", headers=decision.headers())


CurrentPrincipal = Annotated[Principal, Depends(require_api_key)]
