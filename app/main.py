"""create_app(): settings, logging, middleware, routers, error handlers and the lifespan."""

from __future__ import annotations

import gc
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2
import structlog
from fastapi import FastAPI
from redis.asyncio import Redis

from app.agent.mcp import McpTools
from app.agent.registry import ToolRegistry, build_registry
from app.agent.tools.base import Tool
from app.agents.catalog import build_catalog
from app.agents.router import router as agents_router
from app.auth.cache import KeyCache
from app.auth.limits import Counters, Limits, LocalCounters, RedisCounters
from app.chat.router import EVENTS as CHAT_EVENTS
from app.chat.router import router as chat_router
from app.conversations.retention import retention_sweeps
from app.conversations.router import router as conversations_router
from app.core.config import ConfigError, Settings, load_settings
from app.core.db import Database, create_engine, create_sessionmaker, instrument
from app.core.errors import install_error_handlers
from app.core.lifecycle import Lifecycle, drain_on_sigterm
from app.core.locks import LocalLocks, LockManager, RedisLocks
from app.core.logging import configure_logging
from app.core.loop import LoopLag
from app.core.metrics import Metrics
from app.core.middleware import RequestContextMiddleware
from app.core.redis import create_follower_redis, create_redis
from app.core.telemetry import Telemetry, activate
from app.core.telemetry import configured as tracing_configured
from app.files.router import router as files_router
from app.files.storage import open_storage
from app.health.router import router as health_router
from app.llm.factory import create_llm
from app.memories.router import router as memories_router
from app.openai.router import router as openai_router
from app.playground.router import router as playground_router
from app.runs.followers import Followers
from app.runs.leases import Leases
from app.runs.manager import RunManager
from app.runs.router import router as runs_router
from app.runs.store import RunStore
from app.state import Resources
from app.turns.approvals import expiring_approvals
from app.turns.compaction import Compactor
from app.turns.idempotency import IdempotencyStore, LocalIdempotency, RedisIdempotency
from app.turns.queue import adoption_sweeps
from app.turns.start import TurnService
from app.turns.turn import RECORD_DEADLINE
from app.usage.router import router as usage_router

log = structlog.get_logger("app.lifespan")


@dataclass(frozen=True)
class Coordination:
    """What replicas share through Redis, or per-process stand-ins when there is none."""

    locks: LockManager
    idempotency: IdempotencyStore
    limits: Limits
    run_store: RunStore | None
    leases: Leases | None = None


def build_coordination(settings: Settings, redis: Redis | None, follower_redis: Redis | None = None) -> Coordination:
    prefix = settings.redis_key_prefix

    def limits(counters: Counters) -> Limits:
        return Limits(
            counters,
            per_minute=settings.rate_limit_per_minute,
            tokens_per_day=settings.tokens_per_day,
            turns_in_flight=settings.max_turns_in_flight_per_key,
            turn_ttl=settings.turn_timeout + 60,  # a slot outlives any turn, then frees itself
        )

    if redis is None:
        return Coordination(
            locks=LocalLocks(settings.lock_ttl_seconds),
            idempotency=LocalIdempotency(settings.idempotency_ttl_seconds),
            limits=limits(LocalCounters()),
            run_store=None,
        )
    return Coordination(
        locks=RedisLocks(redis, prefix, settings.lock_ttl_seconds),
        idempotency=RedisIdempotency(redis, prefix, settings.idempotency_ttl_seconds),
        limits=limits(RedisCounters(redis, prefix)),
        run_store=RunStore(
            redis, prefix, settings.run_retention_seconds, settings.run_max_events, reader=follower_redis
        ),
        leases=Leases(redis, prefix, uuid.uuid4().hex, settings.run_lease_seconds, settings.run_retention_seconds),
    )


def build_lifespan(
    settings: Settings, tools: ToolRegistry, metrics: Metrics, telemetry: Telemetry | None = None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # AsyncExitStack releases in reverse order, also when start-up fails halfway.
        async with AsyncExitStack() as stack:
            if telemetry is not None:
                stack.callback(telemetry.shutdown)  # last: every span of the shutdown is exported
            stack.enter_context(activate(telemetry))
            lifecycle = Lifecycle(settings.shutdown_grace_seconds)
            stack.callback(lifecycle.close)
            stack.enter_context(drain_on_sigterm(lifecycle))
            loop_lag = await stack.enter_async_context(LoopLag(metrics).running())
            engine = create_engine(settings)
            stack.push_async_callback(engine.dispose)
            instrument(engine, metrics)
            sessions = create_sessionmaker(engine)
            redis = create_redis(settings)
            if redis is not None:
                stack.push_async_callback(redis.aclose)
            # Followers' blocking reads get a bounded pool of their own: idle followers of quiet
            # runs must never take the connections locks and limits need.
            follower_redis = create_follower_redis(settings)
            if follower_redis is not None:
                stack.push_async_callback(follower_redis.aclose)
            if telemetry is not None:  # the database's and Redis's spans, from their instrumentations
                stack.enter_context(telemetry.instrumented(engine, redis))
            http = await stack.enter_async_context(
                httpx2.AsyncClient(
                    timeout=httpx2.Timeout(30.0, connect=settings.llm_connect_timeout), follow_redirects=False
                )
            )
            # One client per distinct provider, base URL and key, shared by the agents that use it.
            agents = build_catalog(settings, tools, stack, lambda own: create_llm(own, http))
            # MCP servers' sessions live in the loops of this task group; a server that is down does
            # not hold start-up: its tools join when it connects. Closed after the runs (below).
            await stack.enter_async_context(McpTools(settings, tools, metrics).running())
            coordination = build_coordination(settings, redis, follower_redis)
            # Entered last, so it closes first: runs finish (or are interrupted) and are recorded
            # while the database and Redis are still there.
            db = Database(engine, metrics)
            files = await open_storage(settings.file_storage_url, db, stack)
            # Pauses past APPROVAL_TIMEOUT_SECONDS get their pending calls denied and recorded.
            await stack.enter_async_context(expiring_approvals(db, settings.approval_timeout_seconds))
            # CONVERSATION_RETENTION_DAYS: old conversations deleted in small batches, one replica at a time.
            await stack.enter_async_context(
                retention_sweeps(sessions, coordination.locks, settings.conversation_retention_days,
                                 settings.retention_sweep_seconds)
            )  # fmt: skip
            # Long conversations are compacted in the background by its task group (closed after the runs).
            compactor = await stack.enter_async_context(
                Compactor(sessions, coordination.locks, coordination.limits, agents, settings)
            )
            runs = await stack.enter_async_context(
                RunManager(
                    coordination.run_store,
                    lifecycle,
                    metrics,
                    leases=coordination.leases,
                    db=db,
                    # Longer than any turn can take to run and be recorded: only the dead are swept.
                    abandoned_after=settings.turn_timeout + RECORD_DEADLINE + 60,
                )
            )
            metrics.watch_pool(lambda: int(getattr(engine.pool, "checkedout", lambda: 0)()))
            log.info(
                "app.started",
                agents=[f"{agent.name} ({agent.provider} {agent.model})" for agent in agents.usable(None)],
                default_agent=agents.default.name,
                database="sqlite" if settings.is_sqlite else "postgresql",
                redis=redis is not None,
                mcp_servers=[server.name for server in settings.mcp_servers],
            )
            # Everything built so far (modules, settings, clients) lives as long as the process: take
            # it out of the collector's full passes, which would walk it all again and again and
            # stall the loop for tens of milliseconds each time under load.
            gc.freeze()
            if agents.default.provider == "offline":
                log.warning("app.offline_model", hint="set ANTHROPIC_API_KEY to use Claude")
            # Typed, on app.state, read only through app/state.py's dependencies; taken off first
            # at shutdown, so nothing reaches a resource being released.
            app.state.resources = resources = Resources(
                settings=settings,
                engine=engine,
                sessions=sessions,
                db=db,
                keys=KeyCache(settings.auth_cache_seconds, settings.auth_cache_size),
                loop_lag=loop_lag,
                redis=redis,
                agents=agents,
                http=http,
                tools=tools,
                lifecycle=lifecycle,
                locks=coordination.locks,
                idempotency=coordination.idempotency,
                limits=coordination.limits,
                runs=runs,
                followers=Followers(settings.run_max_followers_per_key, settings.redis_follower_connections),
                metrics=metrics,
                compactor=compactor,
                files=files,
            )
            stack.callback(delattr, app.state, "resources")
            # Queued messages whose replica stopped are adopted here, answered as /chat answers them.
            await stack.enter_async_context(
                adoption_sweeps(
                    resources,
                    lambda queued: TurnService(resources).adopt(queued, CHAT_EVENTS),
                    settings.queue_adoption_seconds,
                )
            )
            yield
            log.info("app.stopping")

    return lifespan


def create_app(settings: Settings | None = None, *, extra_tools: Sequence[Tool[Any]] = ()) -> FastAPI:
    """Build the app. `extra_tools` are offered to the agent beside the built-ins AGENT_TOOLS enables."""
    settings = settings or load_settings()
    # Traces only where OTEL_* sets them up (app/core/telemetry.py); otherwise nothing of them is built.
    telemetry = Telemetry() if tracing_configured() else None
    configure_logging(settings.resolved_log_format(), settings.log_level)
    metrics = Metrics()
    try:
        tools = build_registry(settings, extra_tools)
    except ValueError as exc:
        print(f"agentchat: configuration error: {exc}", file=sys.stderr)  # noqa: T201
        raise ConfigError(2) from None
    app = FastAPI(
        title="agentchat",
        version="0.1.0",
        summary="Multi-turn conversations with a tool-using LLM agent.",
        # DOCS_ENABLED=false: no /docs, /redoc or /openapi.json (the deployed default, see deploy/k8s).
        docs_url="/docs" if settings.docs_enabled else None,
        redoc_url="/redoc" if settings.docs_enabled else None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        lifespan=build_lifespan(settings, tools, metrics, telemetry),
    )
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(chat_router)
    app.include_router(agents_router)
    app.include_router(conversations_router)
    app.include_router(memories_router)
    app.include_router(files_router)
    app.include_router(runs_router)
    app.include_router(usage_router)
    app.include_router(openai_router)
    app.include_router(playground_router)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        metrics=metrics,
        # Uploads, and /v1 requests that may carry files inline (base64: 4/3 of the bytes).
        large_bodies=(("/files", "/v1/chat/completions", "/v1/responses"), settings.file_max_bytes * 4 // 3 + 65536),
    )
    if telemetry is not None:  # outermost: the server span holds the whole request, its log lines too
        app.add_middleware(telemetry.asgi)
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn app.main:app` builds the app on first access, so importing this module creates nothing.
    if name == "app":
        return create_app()
    raise AttributeError(name)
