"""What the app holds for its lifetime, and the one way routes reach it: typed dependencies.

The lifespan (app/main.py) builds one `Resources` and puts it on `app.state.resources`. Routes
never read `app.state` themselves: they declare what they use (`SettingsDep`, `SessionDep`,
`ResourcesDep`, …), so the types are checked, the uses are visible in signatures, and a test can
build an app around any resources it likes (`app.state.resources = …`). The dependencies every turn
resolves (the key, the turn service, the transaction opener) take the request and read it through
`resources_of` rather than depending on `ResourcesDep`: FastAPI resolves a nested dependency again
on every request, cached or not, a pass that cost a turn more than the dependency's own work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, cast

import httpx2
from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.applications import Starlette

from app.core.config import Settings
from app.core.db import Database, Transactions
from app.core.lifecycle import Lifecycle
from app.core.locks import LockManager
from app.core.loop import LoopLag
from app.core.metrics import Metrics

if TYPE_CHECKING:  # domain types, for type checking only: the domains import this module, not the reverse
    from app.agent.registry import ToolRegistry
    from app.agents.catalog import AgentCatalog
    from app.auth.cache import KeyCache
    from app.auth.limits import Limits
    from app.files.storage import FileStorage
    from app.runs.followers import Followers
    from app.runs.manager import RunManager
    from app.turns.compaction import Compactor
    from app.turns.idempotency import IdempotencyStore


@dataclass(frozen=True, slots=True, kw_only=True)
class Resources:
    """Everything the lifespan built, released by it in reverse order."""

    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    db: Database
    keys: KeyCache
    loop_lag: LoopLag
    redis: Redis | None
    http: httpx2.AsyncClient
    agents: AgentCatalog
    tools: ToolRegistry
    lifecycle: Lifecycle
    locks: LockManager
    idempotency: IdempotencyStore
    limits: Limits
    runs: RunManager
    followers: Followers
    metrics: Metrics
    compactor: Compactor | None = None  # long conversations' compactions (app/turns/compaction.py)
    files: FileStorage  # where uploaded files' bytes live (app/files/storage.py)


def resources_of(app: Starlette) -> Resources:
    """The one typed read of `app.state`: what the lifespan put there."""
    return cast(Resources, app.state.resources)


async def get_resources(request: Request) -> Resources:
    """Everything the lifespan built, as one dependency: the hot path resolves one, not a dozen."""
    return resources_of(request.app)


ResourcesDep = Annotated[Resources, Depends(get_resources)]


# All `async def`, even the trivial ones: FastAPI runs a plain `def` dependency in the threadpool.
async def get_settings(resources: ResourcesDep) -> Settings:
    return resources.settings


async def get_sessions(resources: ResourcesDep) -> async_sessionmaker[AsyncSession]:
    return resources.sessions


async def get_redis(resources: ResourcesDep) -> Redis | None:
    return resources.redis


async def get_lifecycle(resources: ResourcesDep) -> Lifecycle:
    return resources.lifecycle


async def get_metrics(resources: ResourcesDep) -> Metrics:
    return resources.metrics


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


async def get_transactions(request: Request) -> Transactions:
    """A transaction opener for the request: each `async with transactions() as tx` is one short
    transaction. Open until the response has been sent, streaming included (the request's
    middleware closes it, app/core/middleware.py); a turn that outlives its request (a run) opens
    its own. A plain dependency, not one that yields: FastAPI's set-up for a yielding dependency
    (a shielded cancel scope, an exit stack entry) cost a turn more than the rest of its dependencies."""
    return Transactions.for_request(request.scope, resources_of(request.app).db)


TransactionsDep = Annotated[Transactions, Depends(get_transactions)]
