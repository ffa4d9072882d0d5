"""The typed lifespan state (what the app holds for its lifetime) and the domain dependencies on it."""

from __future__ import annotations

from typing import Annotated, TypedDict, cast

import httpx
from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.agent.registry import ToolRegistry
from app.auth.cache import KeyCache
from app.auth.limits import Limits
from app.chat.idempotency import IdempotencyStore
from app.core.config import Settings
from app.core.db import Database
from app.core.lifecycle import Lifecycle
from app.core.locks import LockManager
from app.core.loop import LoopLag
from app.core.metrics import Metrics
from app.llm.base import ChatModel
from app.runs.manager import RunManager


class State(TypedDict):
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    db: Database
    keys: KeyCache
    loop_lag: LoopLag
    redis: Redis | None
    http: httpx.AsyncClient
    llm: ChatModel
    tools: ToolRegistry
    lifecycle: Lifecycle
    locks: LockManager
    idempotency: IdempotencyStore
    limits: Limits
    runs: RunManager
    metrics: Metrics


async def get_app_state(request: Request) -> State:
    """Everything the lifespan built, as one dependency: the hot path resolves one, not a dozen."""
    return cast(State, request.scope["state"])


AppStateDep = Annotated[State, Depends(get_app_state)]
