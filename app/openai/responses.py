"""/v1/responses: create (JSON, stream, background), retrieve (or resume its stream), cancel, delete, input items.

The server owns the history: a response is one turn, `resp_<assistant message id>`, and
`previous_response_id` continues that answer's conversation with the history up to it. Streamed
and background responses are runs whose events are the Responses stream itself
(app/openai/response_events.py): `GET …?stream=true&starting_after=N` follows the run from any
replica after event N; `background` runs on when its client leaves (a run that does not cancel
on disconnect), and a streamed response that is not in the background is cancelled when its
client leaves, its partial answer recorded.

A gated tool's call (an agent's `approval`) ends a response `completed` with an
`mcp_approval_request` item; `mcp_approval_response` input items with `previous_response_id`
continue that same turn as a new response, `resp_<answer id>_<k>` (app/openai/approvals.py).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response

from app.agent.loop import Decision
from app.agents.errors import AgentMismatch
from app.auth.deps import CurrentPrincipal, Principal
from app.conversations.errors import ConversationNotFound
from app.core.db import Transactions
from app.core.errors import ServiceUnavailable
from app.llm.base import Usage
from app.openai.approvals import approval_decisions, approval_input_items
from app.openai.chat import STREAM, IdempotencyKey, pick_agent
from app.openai.clients import sampling_of
from app.openai.conversation_items import conversation_id
from app.openai.conversation_store import bind_unanswered
from app.openai.conversations import ConversationNotFoundHere, conversation_param
from app.openai.errors import (
    InvalidParam,
    NotCancellable,
    OpenAIRoute,
    ResponseNotFound,
    ResponseRunning,
    declared,
)
from app.openai.files import attach_parts, user_message
from app.openai.history import check_characters, responses_turn
from app.openai.items import rendered, resolve_references
from app.openai.repository import StoredAnswer, delete_turn, get_answer, get_input, paused_answer_with_call
from app.openai.response_events import IN_PROGRESS, ResponseEvents, ResponseJSONResponse, replayed, response_of
from app.openai.response_objects import (
    Segment,
    outcome,
    output_items,
    parse_response_id,
    parse_segment,
    response_object,
    segment_of,
)
from app.openai.runs import run_of, settled
from app.openai.schemas import InputItemList, ResponseCreateRequest, ResponseDeleted, ResponseOut
from app.openai.tools import client_tools, tool_choice
from app.runs.manager import Run
from app.runs.responses import RunStreamResponse, StoredRunStreamResponse
from app.state import ResourcesDep, TransactionsDep
from app.turns.approvals import CallOptions, continuation_run_id
from app.turns.begin import TurnOptions
from app.turns.errors import ToolResultUnmatched, UndecidedCalls
from app.turns.start import Replay, ResumeRequest, TurnRequest, TurnService, TurnServiceDep
from app.turns.store import TurnRepository
from app.turns.turn import Turn

router = APIRouter(prefix="/responses", tags=["openai"], route_class=OpenAIRoute)


def _id(response_id: str, param: str | None = None) -> uuid.UUID:
    found = parse_response_id(response_id)
    if found is None:
        raise ResponseNotFound(param)
    return found


def _segment(response_id: str) -> tuple[uuid.UUID, int]:
    found = parse_segment(response_id)
    if found is None:
        raise ResponseNotFound()
    return found


def _part(answer: StoredAnswer, number: int) -> Segment:
    found = segment_of(answer.attributes, number, answer.created_at, answer.usage, answer.id)
    if found is None:
        raise ResponseNotFound()
    return found


def stored_response(answer: StoredAnswer, number: int = 0) -> dict[str, Any]:
    """A stored answer as its `number`-th response (0: the first; k: its k-th continuation after approvals)."""
    part = _part(answer, number)
    used: Usage | None
    if part.end is not None:  # a response that paused for approval, continued since by a later one
        state, paused, used = outcome("awaiting_approval", None, None), True, part.used
    else:
        state = outcome(answer.status, answer.stop_reason, answer.error)
        paused, used = answer.status == "awaiting_approval", None if answer.running else part.used
    return response_object(
        answer.id,
        part.created_at,
        part.attributes,
        state=state,
        output=output_items(answer.content, answer.id, start=part.start, end=part.end, paused=paused),
        used=used,
        segment=number,
    )


def _answered_as_json(answer: StoredAnswer, number: int) -> bool:
    """A response created neither streamed nor in the background: no run. (A continuation's, and one
    stored before `stream` was kept, may have had one.)"""
    return number == 0 and answer.attributes.get("stream") is False and not answer.attributes.get("background")


def _run_id(message_id: uuid.UUID, number: int) -> uuid.UUID:
    return continuation_run_id(message_id, number) if number else message_id


async def _answer(transactions: Transactions, message_id: uuid.UUID, owner: uuid.UUID) -> StoredAnswer:
    async with transactions.statement() as conn:
        answer = await get_answer(conn, message_id, owner_id=owner)
    if answer is None:
        raise ResponseNotFound()
    return answer


@router.post(
    "",
    response_model=ResponseOut,
    responses={**declared(400, 401, 404, 409, 429, 502, 503, 504), 200: {"content": STREAM}},
)
async def create_response(
    body: ResponseCreateRequest,
    principal: CurrentPrincipal,
    turns: TurnServiceDep,
    transactions: TransactionsDep,
    resources: ResourcesDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A response: one turn, continuing `previous_response_id`'s conversation or starting one."""
    ours = resources.tools.names
    model, agent = pick_agent(body.model, resources.agents, principal.agents)
    previous = body.previous_response_id
    after = _id(previous, "previous_response_id") if previous is not None else None
    conversation = conversation_param(body.conversation, previous)  # a turn of that conversation
    if body.background and not body.store:
        raise InvalidParam("store", "A background response is stored: it cannot have store=false.")
    check_characters(body.instructions, "instructions")
    decisions = approval_decisions(body.input, chained=previous is not None)
    if decisions is not None:
        return await _continue_paused(body, decisions, after, model, principal, turns, transactions, idempotency_key)
    input_ = await resolve_references(transactions, body.input, principal.owner_id)
    if isinstance(input_, list):  # input_image and input_file parts become the caller's stored files
        parts = [(f"input[{i}].content", item.get("content")) for i, item in enumerate(input_) if user_message(item)]
        await attach_parts(resources, principal.owner_id, parts, model=resources.agents.resolve(agent, None).model)
    call = responses_turn(input_, continuing=after is not None or conversation is not None)
    tools = client_tools(body.tools, ours, nested=False)
    attributes = {
        "api": "responses",
        "model": model,
        **body.model_dump(include={"instructions", "previous_response_id", "metadata", "tools", "tool_choice"}),
        # `stream` too: a response answered as JSON has no run that GET ?stream=true could follow.
        **body.model_dump(include={"max_output_tokens", "background", "store", "user", "stream"}),
        **({"conversation": {"id": conversation_id(conversation)}} if conversation is not None else {}),
    }
    options = TurnOptions(
        approvals=True,  # a gated call is an mcp_approval_request item; mcp_approval_response continues
        content=call.content,
        history=call.history,
        after=after,
        # As OpenAI does: instructions are not carried over from the previous response. A conversation's
        # own (its system and developer items) apply when the response brings none.
        system_per_turn=conversation is None or bool(body.instructions or call.system),
        tools=tools,
        tool_choice=tool_choice(body.tool_choice, [*ours, *(t["name"] for t in tools)]),
        max_tokens=body.max_output_tokens,
        attributes=attributes,
        end_user=body.user,
        sampling=sampling_of(body.model_extra),
    )
    follow = body.stream or body.background

    def respond(turn: Turn) -> dict[str, Any]:
        return response_of(turn, attributes)

    request = TurnRequest(
        owner_id=principal.owner_id,
        message=call.text,
        conversation_id=conversation,
        system="\n\n".join(s for s in (body.instructions, call.system) if s and s.strip()) or None,
        incremental=follow,
        idempotency_key=idempotency_key,
        fingerprint={"api": "responses", **body.model_dump(mode="json")},
        options=options,
        agent=agent,
        allowed_agents=principal.agents,
    )
    try:
        try:
            started = await turns.start(request, transactions, respond=respond)
        except AgentMismatch:
            # A conversation made by POST /v1/conversations is bound to the default agent until its
            # first answer: the first response names its agent (nothing was stored by the refusal).
            if conversation is None or not await bind_unanswered(
                transactions, conversation, owner_id=principal.owner_id, agent=agent
            ):
                raise
            started = await turns.start(request, transactions, respond=respond)
    except ConversationNotFound:
        if conversation is not None:
            raise ConversationNotFoundHere("conversation") from None
        raise ResponseNotFound("previous_response_id") from None
    except ToolResultUnmatched as exc:
        raise InvalidParam(call.results_at.get(exc.call_id, "input"), exc.message) from None
    return await _answer_turn(body, started, attributes, turns)


async def _answer_turn(
    body: ResponseCreateRequest, started: Turn | Replay, attributes: dict[str, Any], turns: TurnService
) -> Response:
    """A started turn (or a continuation) as this route answers: JSON, its stream, or its background run."""
    if isinstance(started, Replay):
        return replayed(started.response) if body.stream else JSONResponse(started.response)
    if not (body.stream or body.background):
        return ResponseJSONResponse(started, attributes)
    run = await turns.start_run(started, ResponseEvents(attributes))
    if body.stream:
        # In the background the run goes on without its client, to be rejoined with starting_after.
        ping = turns.settings.sse_ping_seconds
        return RunStreamResponse(run, ping_seconds=ping, cancel_on_disconnect=not body.background)
    begun, resumed = started.started, started.resume
    created = resumed.created_at if resumed is not None and resumed.created_at else begun.created_at
    segment = resumed.segment if resumed is not None else 0
    return JSONResponse(
        response_object(begun.message_id, created, attributes, state=IN_PROGRESS, output=[], used=None, segment=segment)
    )


async def _continue_paused(
    body: ResponseCreateRequest,
    decisions: list[Decision],
    after: uuid.UUID | None,
    model: str,
    principal: Principal,
    turns: TurnService,
    transactions: Transactions,
    idempotency_key: str | None,
) -> Response:
    """mcp_approval_response items: the paused turn `previous_response_id` names (or, a client that
    resends the whole context, the one its approval requests name) goes on, as a new response."""
    if after is None:
        async with transactions() as tx:
            after = await paused_answer_with_call(tx.conn, decisions[0].tool_use_id, owner_id=principal.owner_id)
    if after is None:
        raise InvalidParam(
            "previous_response_id", "mcp_approval_response items continue a response: name it in previous_response_id."
        )
    if body.background and not body.store:
        raise InvalidParam("store", "A background response is stored: it cannot have store=false.")
    owner = principal.owner_id
    async with transactions() as tx:
        conversation = await TurnRepository(tx.conn).conversation_of_answer(after, owner_id=owner)
    if conversation is None:
        raise ResponseNotFound("previous_response_id")
    attributes = {
        "api": "responses",
        "model": model,
        **body.model_dump(include={"instructions", "previous_response_id", "metadata", "tools", "tool_choice"}),
        **body.model_dump(include={"max_output_tokens", "background", "store", "user"}),
    }

    ours = turns.resources.tools.names
    tools = client_tools(body.tools, ours, nested=False)
    # As any response: its own tools, instructions and sampling, none carried over from the paused one.
    calls = CallOptions(
        tools=tuple(tools),
        tool_choice=tool_choice(body.tool_choice, [*ours, *(t["name"] for t in tools)]),
        system=body.instructions if body.instructions and body.instructions.strip() else None,
        system_per_turn=True,
        max_tokens=body.max_output_tokens,
        sampling=sampling_of(body.model_extra),
    )

    def respond(turn: Turn) -> dict[str, Any]:
        return response_of(turn, attributes)

    try:
        started = await turns.resume(
            ResumeRequest(
                owner_id=owner,
                conversation_id=conversation,
                decisions=decisions,
                incremental=body.stream or body.background,
                idempotency_key=idempotency_key,
                fingerprint={"api": "responses", **body.model_dump(mode="json")},
                allowed_agents=principal.agents,
                message_id=after,
                attributes=attributes,
                calls=calls,
            ),
            transactions,
            respond=respond,
        )
    except UndecidedCalls as exc:
        raise InvalidParam("input", exc.message) from None
    return await _answer_turn(body, started, attributes, turns)


StartingAfter = Annotated[
    int | None, Query(ge=0, lt=10**15, description="Stream the events after this sequence number.")
]


@router.get(
    "/{response_id}", response_model=ResponseOut, responses={**declared(401, 404, 429, 503), 200: {"content": STREAM}}
)
async def get_response(
    response_id: str,
    principal: CurrentPrincipal,
    resources: ResourcesDep,
    transactions: TransactionsDep,
    stream: bool = False,
    starting_after: StartingAfter = None,
) -> Response:
    """A response; with `stream=true`, its events (after `starting_after`), live while it runs."""
    (message_id, number), owner = _segment(response_id), principal.owner_id
    after = starting_after + 1 if starting_after is not None else 0  # run event ids are sequence numbers + 1
    answer: StoredAnswer | None = None
    if stream:
        run_id = _run_id(message_id, number)
        if run_id not in resources.runs.runs:
            # Read first: a response answered as JSON never ran, and looking for the run of a fresh
            # id that other replicas do not know asks Redis again for up to REGISTERED_WITHIN.
            answer = await _answer(transactions, message_id, owner)
        if answer is None or not _answered_as_json(answer, number):
            run, ping = await run_of(resources.runs, run_id, owner), resources.settings.sse_ping_seconds
            if run is not None:
                # A resumed stream is a follower like GET /runs/{id}/events: the same per-key cap.
                ticket = resources.followers.admit(owner, remote=not isinstance(run, Run))  # released when it ends
                if isinstance(run, Run):
                    return RunStreamResponse(
                        run, ping_seconds=ping, after=after, cancel_on_disconnect=False, ticket=ticket
                    )
                return StoredRunStreamResponse(run, run_id, ping_seconds=ping, after=after, ticket=ticket)
    if answer is None or answer.running:  # the stored answer as it is now, once its run is not followed
        answer = await _answer(transactions, message_id, owner)
    if not stream:
        return JSONResponse(stored_response(answer, number))
    if answer.running and _part(answer, number).end is None:
        raise InvalidParam("stream", "This response is running without an event stream to follow (not streamed).")
    return replayed(stored_response(answer, number), after=after)


@router.post("/{response_id}/cancel", response_model=ResponseOut, responses=declared(401, 404, 409, 429, 503))
async def cancel_response(
    response_id: str, principal: CurrentPrincipal, resources: ResourcesDep, transactions: TransactionsDep
) -> JSONResponse:
    """Stop a background or streamed response, wherever it runs; its partial answer is kept."""
    (message_id, number), owner, runs = _segment(response_id), principal.owner_id, resources.runs
    answer = await _answer(transactions, message_id, owner)
    if answer.running and _part(answer, number).end is None:
        run_id = _run_id(message_id, number)
        if await run_of(runs, run_id, owner) is None:
            raise NotCancellable()
        try:
            await runs.cancel(run_id, "cancelled")
            await settled(runs, run_id)
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable("Could not reach the replica running this response.") from exc
        answer = await _answer(transactions, message_id, owner)
    return JSONResponse(stored_response(answer, number))


@router.delete("/{response_id}", response_model=ResponseDeleted, responses=declared(401, 404, 409, 429))
async def delete_response(
    response_id: str, principal: CurrentPrincipal, transactions: TransactionsDep
) -> ResponseDeleted:
    """Delete a response: its turn (input and answer) leaves the conversation (all of the answer's
    responses, when it was continued after approvals)."""
    message_id, _ = _segment(response_id)
    async with transactions.atomic() as conn:
        answer = await get_answer(conn, message_id, owner_id=principal.owner_id)
        if answer is None:
            raise ResponseNotFound()
        if answer.running:
            raise ResponseRunning()
        await delete_turn(conn, answer)
    return ResponseDeleted(id=response_id)


@router.get("/{response_id}/input_items", response_model=InputItemList, responses=declared(400, 401, 404, 429))
async def list_input_items(
    response_id: str,
    principal: CurrentPrincipal,
    transactions: TransactionsDep,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> InputItemList:
    """The input of a response: its user message and function_call_output items, after the history
    the client sent with it, if it sent one; of a continuation after approvals, its approval responses."""
    message_id, number = _segment(response_id)
    async with transactions.statement() as conn:
        answer = await get_answer(conn, message_id, owner_id=principal.owner_id)
        rows = await get_input(conn, answer) if answer is not None and not number else []
    if answer is None:
        raise ResponseNotFound()
    if number:
        _part(answer, number)  # a 404 for a continuation it does not have
        items = approval_input_items(answer.attributes["resumptions"][number - 1])
    else:
        items = [item for row in rows for item in rendered(row)]
    if order == "desc":
        items.reverse()
    first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
    return InputItemList(data=items, first_id=first, last_id=last, has_more=False)
