"""POST /chat: validate, start the turn through the service, answer as JSON or as a stream.

The route declares what it uses: the caller's key, the turn service (app/turns) and a transaction
opener (`TransactionsDep`, open until the response has been sent). Phase 1 runs in a transaction
from it before this returns; a JSON turn's phases 2 and 3 run inside the response, still within
it; a stream is a run, which opens its own (it may outlive this request).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from starlette.responses import JSONResponse, Response

from app.agent.loop import Decision
from app.agents.errors import AgentMismatch, AgentNotFound, AgentUnavailable
from app.auth.deps import CurrentPrincipal
from app.chat.responses import ChatEvents, ChatJSONResponse, ReplayResponse, chat_body, chat_response
from app.chat.schemas import ApprovalsRequest, ChatRequest, ChatResponse, RegenerateRequest
from app.conversations.errors import ConversationNotFound, MessageNotFound
from app.core.db import Transactions
from app.core.errors import DatabaseUnavailable, InvalidRequest, RateLimited, Unauthorized, envelope, responses
from app.files.attach import check_model, resolve_attachments
from app.files.errors import AttachmentsUnsupported, FileNotFound, TooManyAttachments
from app.llm.base import Block
from app.llm.errors import UpstreamError, UpstreamOverloaded, UpstreamRateLimited, UpstreamTimeout
from app.runs.responses import RunStreamResponse
from app.state import TransactionsDep
from app.turns.begin import TurnOptions
from app.turns.errors import NotPending, UndecidedCalls
from app.turns.queue import Queued
from app.turns.start import START_ERRORS, Replay, ResumeRequest, TurnRequest, TurnService, TurnServiceDep
from app.turns.turn import Turn

router = APIRouter(tags=["chat"])

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, description="Retries with the same key return the same answer."),
]
EVENTS = ChatEvents()
# What any turn through this door can answer, besides its answer.
TURN_ERRORS = (
    Unauthorized,
    InvalidRequest,
    ConversationNotFound,
    RateLimited,
    UpstreamRateLimited,
    UpstreamError,
    UpstreamOverloaded,
    DatabaseUnavailable,
    UpstreamTimeout,
    *START_ERRORS,
    AgentNotFound,
    AgentUnavailable,
)
SSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"description": "start, delta…, end | error events"}}}
}


def wants_stream(asked: bool, request: Request) -> bool:
    """SSE when the body asks for it (`stream`) or the client accepts only it."""
    return asked or "text/event-stream" in request.headers.get("accept", "")


async def answer(
    turns: TurnService, started: Turn | Replay | Queued, *, stream: bool, cancel_on_disconnect: bool
) -> Response:
    """A started turn as this door answers it: JSON once it is over, or its run's events as SSE."""
    if isinstance(started, Queued):
        return await queued_answer(turns, started, stream=stream)
    if isinstance(started, Replay):
        return ReplayResponse(started.response) if stream else JSONResponse(started.response)
    if not stream:
        return ChatJSONResponse(started)
    run = await turns.start_run(started, EVENTS)
    return RunStreamResponse(
        run, ping_seconds=turns.settings.sse_ping_seconds, cancel_on_disconnect=cancel_on_disconnect
    )


async def queued_answer(turns: TurnService, queued: Queued, *, stream: bool) -> Response:
    """A queued turn: its run's events (`queued`, then the turn's), or its answer as JSON once it has
    run. Its run is the app's: a client that leaves does not cancel it (its answer is recorded)."""
    if stream:
        return RunStreamResponse(queued.run, ping_seconds=turns.settings.sse_ping_seconds, cancel_on_disconnect=False)
    await queued.done.wait()  # no connection held meanwhile
    if queued.error is not None:
        error = queued.error
        return JSONResponse(envelope(error.type, error.message), error.status_code, error.headers)
    if queued.turn is None:  # cancelled before its turn (shutdown)
        return JSONResponse(envelope("cancelled", "The queued turn was cancelled."), 503)
    return Response(chat_body(queued.turn).model_dump_json(), media_type="application/json")


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={
        **responses(*TURN_ERRORS, AgentMismatch, FileNotFound, TooManyAttachments, AttachmentsUnsupported),
        **SSE,
    },
)
async def chat(
    body: ChatRequest,
    request: Request,
    principal: CurrentPrincipal,
    turns: TurnServiceDep,
    transactions: TransactionsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Send a user turn; get the assistant's answer as JSON or as Server-Sent Events."""
    if body.system is not None and body.conversation_id is not None:
        # Silently ignoring it would leave the caller believing the prompt changed.
        raise InvalidRequest("`system` can only be set when a conversation starts (omit `conversation_id`).")
    if body.parent_message_id is not None and body.conversation_id is None:
        raise InvalidRequest("`parent_message_id` names an answer of the conversation `conversation_id`.")
    if body.parent_message_id is not None and body.multitask == "enqueue":
        raise InvalidRequest("A queued message goes after the latest one: omit `parent_message_id`.")
    stream = wants_stream(body.stream, request)
    options = TurnOptions(after=body.parent_message_id)
    if body.attachments:
        options = TurnOptions(
            after=body.parent_message_id, content=await attached(body, principal, turns, transactions)
        )
    # Phase 1 (the user's message stored) in a short transaction from `transactions`.
    started = await turns.enqueue(
        TurnRequest(
            owner_id=principal.owner_id,
            message=body.message,
            conversation_id=body.conversation_id,
            system=body.system,
            agent=body.agent,
            allowed_agents=principal.agents,
            multitask=body.multitask,
            incremental=stream,
            idempotency_key=idempotency_key,
            # What a retry must repeat; only an Idempotency-Key's retries are compared.
            fingerprint={**body.model_dump(mode="json"), "stream": stream} if idempotency_key is not None else None,
            options=options,
        ),
        transactions,
        respond=chat_response,
        publisher=EVENTS,
    )
    return await answer(turns, started, stream=stream, cancel_on_disconnect=body.on_disconnect == "cancel")


@router.post(
    "/conversations/{conversation_id}/approvals",
    response_model=ChatResponse,
    responses={**responses(*TURN_ERRORS, NotPending, UndecidedCalls), **SSE},
)
async def decide(
    conversation_id: uuid.UUID,
    body: ApprovalsRequest,
    request: Request,
    principal: CurrentPrincipal,
    turns: TurnServiceDep,
    transactions: TransactionsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Decide the tool calls a paused turn waits on; the same turn goes on, answered as POST /chat answers."""
    stream = wants_stream(body.stream, request)
    started = await turns.resume(
        ResumeRequest(
            owner_id=principal.owner_id,
            conversation_id=conversation_id,
            decisions=[Decision(d.tool_use_id, d.approve, d.input, d.reason) for d in body.decisions],
            incremental=stream,
            idempotency_key=idempotency_key,
            fingerprint={**body.model_dump(mode="json"), "conversation_id": str(conversation_id), "stream": stream}
            if idempotency_key is not None
            else None,
            allowed_agents=principal.agents,
        ),
        transactions,
        respond=chat_response,
    )
    return await answer(turns, started, stream=stream, cancel_on_disconnect=body.on_disconnect == "cancel")


@router.post(
    "/conversations/{conversation_id}/messages/{message_id}/regenerate",
    response_model=ChatResponse,
    responses={**responses(*TURN_ERRORS, MessageNotFound), **SSE},
)
async def regenerate(
    conversation_id: uuid.UUID,
    message_id: uuid.UUID,
    request: Request,
    principal: CurrentPrincipal,
    turns: TurnServiceDep,
    transactions: TransactionsDep,
    body: RegenerateRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A new answer to the user message of this answer, answered as POST /chat answers; the old one
    stays, as its sibling (GET /conversations/{id}/messages?leaf=<id> shows either)."""
    body = body or RegenerateRequest()
    stream = wants_stream(body.stream, request)
    started = await turns.start(
        TurnRequest(
            owner_id=principal.owner_id,
            message="",  # the user message is the stored one
            conversation_id=conversation_id,
            allowed_agents=principal.agents,
            multitask=body.multitask,
            incremental=stream,
            idempotency_key=idempotency_key,
            fingerprint={**body.model_dump(mode="json"), "regenerate": str(message_id), "stream": stream}
            if idempotency_key is not None
            else None,
            options=TurnOptions(regenerate=message_id),
        ),
        transactions,
        respond=chat_response,
    )
    return await answer(turns, started, stream=stream, cancel_on_disconnect=body.on_disconnect == "cancel")


async def attached(
    body: ChatRequest, principal: CurrentPrincipal, turns: TurnService, transactions: Transactions
) -> list[Block]:
    """The user's turn as blocks: its attachments' references (owner-checked), then its text. The
    model it goes to must read them: a 422 now, before anything is stored or sent."""
    settings = turns.settings
    if len(body.attachments) > settings.chat_max_attachments:
        raise TooManyAttachments(f"At most {settings.chat_max_attachments} attachments per message.")
    blocks, bound = await resolve_attachments(
        transactions, body.attachments, owner_id=principal.owner_id, conversation_id=body.conversation_id
    )
    catalog = turns.resources.agents
    name = body.agent or bound
    if name is None or name in catalog:  # an unknown or forbidden agent is phase 1's to refuse
        agent = catalog.resolve(name, None)
        check_model(blocks, model=agent.model, text_only_models=settings.file_text_only_models)
    return [*blocks, {"type": "text", "text": body.message}]
