"""Dependencies on the core resources the lifespan puts on request.state.

All `async def`, even the trivial ones: FastAPI runs a plain `def` dependency in the threadpool,
a thread hop per dependency per request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.lifecycle import Lifecycle


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


async def get_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.state.sessions
    return sessions


async def get_redis(request: Request) -> Redis | None:
    redis: Redis | None = request.state.redis
    return redis


async def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.state.lifecycle
    return lifecycle


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessions)]
RedisDep = Annotated["Redis | None", Depends(get_redis)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]


async def get_session(sessions: SessionsDep) -> AsyncIterator[AsyncSession]:
    async with sessions() as session, session.begin():
        yield session


# scope="function": commit before the response is sent, so a 2xx means the data is stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
