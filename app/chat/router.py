from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.agent.loop import Agent
from app.agent.tools.base import ToolContext
from app.auth.deps import CurrentPrincipal
from app.chat.responses import TurnJSONResponse, TurnStreamResponse
from app.chat.schemas import ChatRequest, ChatResponse
from app.chat.turn import TurnRun, begin_turn
from app.core.errors import (
    ConversationNotFound,
    DatabaseUnavailable,
    PayloadTooLarge,
    ShuttingDown,
    Unauthorized,
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamTimeout,
    responses,
)
from app.core.state import HttpDep, LifecycleDep, LLMDep, SessionsDep, SettingsDep, ToolsDep

router = APIRouter(tags=["chat"])


@router.post(
    "/chat",
    response_model=ChatResponse,
    responses={
        **responses(
            Unauthorized,
            ConversationNotFound,
            PayloadTooLarge,
            UpstreamRateLimited,
            UpstreamError,
            UpstreamOverloaded,
            DatabaseUnavailable,
            UpstreamTimeout,
            ShuttingDown,
        ),
        200: {"content": {"text/event-stream": {"description": "start, delta…, end | error events"}}},
    },
)
async def chat(
    body: ChatRequest,
    request: Request,
    principal: CurrentPrincipal,
    sessions: SessionsDep,
    llm: LLMDep,
    settings: SettingsDep,
    tools: ToolsDep,
    http: HttpDep,
    lifecycle: LifecycleDep,
) -> Response:
    """Send a user turn; get the assistant's answer as JSON or as Server-Sent Events."""
    if lifecycle.draining:
        raise ShuttingDown()
    if len(body.message) > settings.max_message_chars:
        raise PayloadTooLarge(f"The message is longer than {settings.max_message_chars} characters.")
    started = await begin_turn(
        sessions,
        settings,
        principal,
        message=body.message,
        conversation_id=body.conversation_id,
        system=body.system,
    )
    context = ToolContext(
        owner_id=principal.key_id,
        conversation_id=started.conversation_id,
        settings=settings,
        sessions=sessions,
        http=http,
    )
    run = TurnRun(started, Agent(llm, tools, settings), context, sessions, settings, lifecycle)
    wants_stream = body.stream or "text/event-stream" in request.headers.get("accept", "")
    if wants_stream:
        return TurnStreamResponse(run, ping_seconds=settings.sse_ping_seconds)
    return TurnJSONResponse(run)
