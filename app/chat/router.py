from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Annotated, TypeVar

import anyio
import structlog
from fastapi import APIRouter, Header, Request
from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response

from app.agent.loop import Agent
from app.agent.tools.base import ToolContext
from app.auth.deps import CurrentPrincipal
from app.chat.idempotency import Claim, fingerprint
from app.chat.responses import ReplayResponse, RunStreamResponse, TurnJSONResponse, chat_response, turn_driver
from app.chat.schemas import ChatRequest, ChatResponse
from app.chat.turn import TurnRun, begin_turn
from app.core.errors import (
    ConversationBusy,
    ConversationNotFound,
    DatabaseUnavailable,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    PayloadTooLarge,
    RateLimited,
    ServiceBusy,
    ShuttingDown,
    TokenQuotaExceeded,
    Unauthorized,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamTimeout,
    responses,
)
from app.core.locks import Lock, LockManager
from app.state import AppStateDep

router = APIRouter(tags=["chat"])
log = structlog.get_logger(__name__)
T = TypeVar("T")

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, description="Retries with the same key return the same answer."),
]


async def degraded(call: Awaitable[T], fallback: T, feature: str) -> T:
    """Redis-backed features step aside when Redis is down; chat goes on (documented)."""
    try:
        return await call
    except (RedisError, OSError) as exc:
        log.warning("chat.degraded", feature=feature, error=type(exc).__name__)
        return fallback


BUSY = Lock("busy", "")


async def acquire_conversation(locks: LockManager, owner: uuid.UUID, conversation_id: uuid.UUID) -> Lock | None:
    """The conversation's turn lock; BUSY if another turn holds it; None if Redis is down (degraded)."""
    # Keyed by owner too: another owner's id finds a different lock, and then a 404.
    try:
        return await locks.acquire(f"conversation:{owner}:{conversation_id}") or BUSY
    except (RedisError, OSError) as exc:
        log.warning("chat.degraded", feature="conversation_lock", error=type(exc).__name__)
        return None


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={
        **responses(
            Unauthorized,
            ConversationNotFound,
            ConversationBusy,
            IdempotencyInProgress,
            PayloadTooLarge,
            IdempotencyKeyReused,
            RateLimited,
            UpstreamRateLimited,
            UpstreamError,
            UpstreamOverloaded,
            DatabaseUnavailable,
            ServiceBusy,
            ShuttingDown,
            UpstreamTimeout,
        ),
        200: {"content": {"text/event-stream": {"description": "start, delta…, end | error events"}}},
    },
)
async def chat(
    body: ChatRequest,
    request: Request,
    principal: CurrentPrincipal,
    app: AppStateDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Send a user turn; get the assistant's answer as JSON or as Server-Sent Events."""
    settings, db, lifecycle, metrics = app["settings"], app["db"], app["lifecycle"], app["metrics"]
    limits, idempotency, locks = app["limits"], app["idempotency"], app["locks"]
    if lifecycle.draining:
        raise ShuttingDown()
    if settings.admission_max_loop_lag and app["loop_lag"].latest > settings.admission_max_loop_lag:
        # The loop cannot keep up: refuse now, cheaply, before this turn takes a connection it
        # would hold through a slow loop (and time out at the pool seconds later).
        metrics.admission_refusals.inc()
        log.warning("chat.admission_refused", loop_lag_s=round(app["loop_lag"].latest, 3))
        raise ServiceBusy()
    if len(body.message) > settings.max_message_chars:
        raise PayloadTooLarge(f"The message is longer than {settings.max_message_chars} characters.")
    owner = principal.key_id
    stream = body.stream or "text/event-stream" in request.headers.get("accept", "")

    quota = await degraded(limits.check_tokens(owner), None, "token_quota")
    if quota is not None and not quota.allowed:
        log.info("limits.refused", limit="tokens_per_day")
        metrics.limit_refusals.labels("tokens_per_day").inc()
        raise TokenQuotaExceeded(headers=quota.headers())

    fp = fingerprint({**body.model_dump(mode="json"), "stream": stream}) if idempotency_key is not None else ""
    if idempotency_key is not None:
        claim = await degraded(
            idempotency.claim(owner, idempotency_key, fp, settings.turn_timeout + 60), Claim("new"), "idempotency"
        )
        if claim.outcome == "mismatch":
            raise IdempotencyKeyReused()
        if claim.outcome == "running":
            raise IdempotencyInProgress()
        if claim.outcome == "replay":
            assert claim.response is not None
            metrics.idempotent_replays.inc()
            return ReplayResponse(claim.response) if stream else JSONResponse(claim.response)

    lock: Lock | None = None
    try:
        if body.conversation_id is not None:
            lock = await acquire_conversation(locks, owner, body.conversation_id)
            if lock is BUSY:
                lock = None  # not ours to release
                log.info("chat.conversation_busy", conversation_id=str(body.conversation_id))
                metrics.lock_conflicts.inc()
                raise ConversationBusy()
        started = await begin_turn(
            db,
            settings,
            principal,
            message=body.message,
            conversation_id=body.conversation_id,
            system=body.system,
            incremental=stream,
        )
    except BaseException:
        # Undo the claims, even on cancellation (shielded, bounded); then let the error go on.
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            if lock is not None:
                await degraded(locks.release(lock), None, "conversation_lock")
            if idempotency_key is not None:
                await degraded(idempotency.abandon(owner, idempotency_key), None, "idempotency")
        raise

    context = ToolContext(
        owner_id=owner,
        conversation_id=started.conversation_id,
        settings=settings,
        sessions=app["sessions"],
        http=app["http"],
    )
    turn = TurnRun(
        started,
        Agent(app["llm"], app["tools"], settings, metrics),
        context,
        db,
        settings,
        lifecycle,
        metrics,
        lock=(locks, lock) if lock is not None else None,
    )

    async def count_tokens(run: TurnRun) -> None:
        await limits.add_tokens(owner, run.usage.input_tokens + run.usage.output_tokens)

    turn.after_record.append(count_tokens)
    if idempotency_key is not None:
        key = idempotency_key

        async def settle_idempotency(run: TurnRun) -> None:
            if run.status == "complete":
                await idempotency.complete(owner, key, fp, chat_response(run))
            else:
                await idempotency.abandon(owner, key)  # a retry should run the turn again

        turn.after_record.append(settle_idempotency)

    if stream:
        runs = app["runs"]
        run = await runs.start(started.message_id, owner, turn_driver(turn))
        return RunStreamResponse(
            run, runs, ping_seconds=settings.sse_ping_seconds, cancel_on_disconnect=body.on_disconnect == "cancel"
        )
    return TurnJSONResponse(turn)
