"""`Authorization: Bearer <key>` on every protected route."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, Request

from app.auth.repository import ApiKeyRepository
from app.core.errors import Unauthorized
from app.core.state import SessionsDep


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
        row = await ApiKeyRepository(session).get_active_by_key(token)
    if row is None:
        raise Unauthorized("Invalid or revoked API key.", headers={"WWW-Authenticate": "Bearer"})
    structlog.contextvars.bind_contextvars(key_id=str(row.id))
    return Principal(key_id=row.id, name=row.name)


CurrentPrincipal = Annotated[Principal, Depends(require_api_key)]
