"""`Authorization: Bearer <key>` on every protected route."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from redis.exceptions import RedisError

from app.auth.cache import Found
from app.auth.keys import hash_key
from app.auth.repository import find_active
from app.core.errors import RateLimited, Unauthorized
from app.state import Resources, resources_of

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller: an API key, which owns everything it creates (its id is the `owner_id` of
    conversations, messages, memories and runs)."""

    owner_id: uuid.UUID
    name: str
    agents: tuple[str, ...] | None = None  # the agents this key may use; None: all of them


class ApiKeyAuth(HTTPBearer):
    """The caller's key, checked: `Authorization: Bearer <key>`.

    One dependency that is also the OpenAPI security scheme (client generators and API testers read
    it). It reads the header and the resources itself: FastAPI resolves every nested dependency on
    every request, and HTTPBearer's own credentials model, then ours, cost a turn more than the check.
    A missing or malformed header is our own 401 envelope, not FastAPI's bare one.
    """

    def __init__(self) -> None:
        super().__init__(
            auto_error=False, scheme_name="HTTPBearer", description="An API key: `Authorization: Bearer ak_…`."
        )

    async def __call__(self, request: Request) -> Principal:  # type: ignore[override]
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(headers={"WWW-Authenticate": "Bearer"})
        resources = resources_of(request.app)
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


require_api_key = ApiKeyAuth()


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
