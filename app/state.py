"""What the app holds for its lifetime, and the one way routes reach it: typed dependencies.

The lifespan yields this `State`; Starlette copies it into every request's scope. Routes and
dependencies declare what they use (`SettingsDep`, `SessionDep`, `AppStateDep`, …) instead of
reading untyped `request.state.X` or `app.state.X` attributes: the types are checked, the uses
are visible in signatures, and tests can build an app around any state they like.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, TypedDict, cast

import httpx2
from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import Database
from app.core.lifecycle import Lifecycle
from app.core.locks import LockManager
from app.core.loop import LoopLag
from app.core.metrics import Metrics

if TYPE_CHECKING:  # domain types, for type checking only: the domains import this module, not the reverse
    from app.agent.registry import ToolRegistry
    from app.auth.cache import KeyCache
    from app.auth.limits import Limits
    from app.chat.idempotency import IdempotencyStore
    from app.llm.base import ChatModel
    from app.runs.followers import Followers
    from app.runs.manager import RunManager


class State(TypedDict):
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    db: Database
    keys: KeyCache
    loop_lag: LoopLag
    redis: Redis | None
    http: httpx2.AsyncClient
    llm: ChatModel
    tools: ToolRegistry
    lifecycle: Lifecycle
    locks: LockManager
    idempotency: IdempotencyStore
    limits: Limits
    runs: RunManager
    followers: Followers
    metrics: Metrics


async def get_app_state(request: Request) -> State:
    """Everything the lifespan built, as one dependency: the hot path resolves one, not a dozen."""
    return cast(State, request.scope["state"])


AppStateDep = Annotated[State, Depends(get_app_state)]


# All `async def`, even the trivial ones: FastAPI runs a plain `def` dependency in the threadpool.
async def get_settings(app: AppStateDep) -> Settings:
    return app["settings"]


async def get_sessions(app: AppStateDep) -> async_sessionmaker[AsyncSession]:
    return app["sessions"]


async def get_redis(app: AppStateDep) -> Redis | None:
    return app["redis"]


async def get_lifecycle(app: AppStateDep) -> Lifecycle:
    return app["lifecycle"]


async def get_metrics(app: AppStateDep) -> Metrics:
    return app["metrics"]


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessions)]
RedisDep = Annotated[Redis | None, Depends(get_redis)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_session(sessions: SessionsDep) -> AsyncIterator[AsyncSession]:
    async with sessions() as session, session.begin():
        yield session


# scope="function": commit before the response is sent, so a 2xx means the data is stored.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
