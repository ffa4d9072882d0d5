"""GET /v1/models and POST /v1/chat/completions: validate, start the turn through the service, render.

The client owns the history: the model sees the messages it sends; the conversation stores each
call's new turn and answer. Which conversation: the one whose answer has the history key of the
call's messages up to its last assistant message (app/openai/history.py), else a new one.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from starlette.responses import JSONResponse, Response

from app.agents.catalog import AgentCatalog, ServedAgent
from app.auth.deps import CurrentPrincipal
from app.conversations.branches import ROOT
from app.openai.chat_wire import ChatChunks, CompletionJSONResponse, chunk_frames, completion, replay_chunks
from app.openai.clients import ClientHeadersDep, answer_task, is_task_call, sampling_of
from app.openai.errors import InvalidParam, ModelNotFound, OpenAIRoute, declared
from app.openai.files import attach_parts
from app.openai.history import chat_turn
from app.openai.schemas import ChatCompletionOut, ChatCompletionRequest, ModelList, ModelOut
from app.openai.tools import client_tools, tool_choice
from app.runs.responses import RunStreamResponse
from app.state import ResourcesDep, TransactionsDep
from app.turns.begin import TurnOptions
from app.turns.start import Replay, TurnRequest, TurnServiceDep
from app.turns.turn import Turn

router = APIRouter(tags=["openai"], route_class=OpenAIRoute)

AGENT_MODEL = "agentchat"  # the agent (its tools, memory), under an id that does not change with LLM_MODEL
CREATED = 1767225600  # 2026-01-01: model lists carry a creation time; ours is a constant
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, description="Retries with the same key return the same answer."),
]
STREAM = {"text/event-stream": {"description": "Server-Sent Events, then `data: [DONE]`"}}


def served(agents: AgentCatalog, allowed: tuple[str, ...] | None) -> dict[str, ServedAgent]:
    """Model ids and the agents they select: every agent this key may use, by name; and the default
    agent also as `agentchat` (the id from before agents) and as the name of its model."""
    usable = agents.usable(allowed)
    ids = {agent.name: agent for agent in usable}
    if agents.default in usable:
        ids.setdefault(AGENT_MODEL, agents.default)
        ids.setdefault(agents.default.model, agents.default)
    return ids


def pick_agent(model: str | None, agents: AgentCatalog, allowed: tuple[str, ...] | None) -> tuple[str, str]:
    """(the model id the answer shows, the agent it selects); ModelNotFound for any other id."""
    ids = served(agents, allowed)
    model = model if model is not None else AGENT_MODEL
    if model not in ids:
        raise ModelNotFound(model)
    return model, ids[model].name


@router.get("/models", responses=declared(401, 429))
async def list_models(principal: CurrentPrincipal, resources: ResourcesDep) -> ModelList:
    """The models this key may use: each agent under its name (the default also as `agentchat`)."""
    ids = served(resources.agents, principal.agents)
    return ModelList(data=[ModelOut(id=m, created=CREATED, owned_by="agentchat") for m in ids])


@router.get("/models/{model}", responses=declared(401, 404, 429))
async def get_model(model: str, principal: CurrentPrincipal, resources: ResourcesDep) -> ModelOut:
    """One model."""
    found, _ = pick_agent(model, resources.agents, principal.agents)
    return ModelOut(id=found, created=CREATED, owned_by="agentchat")


@router.post(
    "/chat/completions",
    response_model=ChatCompletionOut,
    responses={**declared(400, 401, 404, 409, 429, 502, 503, 504), 200: {"content": STREAM}},
)
async def chat_completions(
    body: ChatCompletionRequest,
    principal: CurrentPrincipal,
    turns: TurnServiceDep,
    transactions: TransactionsDep,
    resources: ResourcesDep,
    client: ClientHeadersDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A chat completion: one turn of the conversation this history extends (as JSON or chunks)."""
    settings, ours = resources.settings, resources.tools.names
    model, agent = pick_agent(body.model, resources.agents, principal.agents)
    if body.n != 1:
        raise InvalidParam("n", "Only one choice (n=1) is supported.")
    sampling = sampling_of(body.model_extra)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    # Image and file parts become the caller's stored files (refused if the agent's model cannot read them).
    parts = [(f"messages[{i}].content", m.content) for i, m in enumerate(body.messages) if m.role == "user"]
    await attach_parts(resources, principal.owner_id, parts, model=resources.agents.resolve(agent, None).model)
    call = chat_turn(principal.owner_id, body.messages)  # every history is checked, a task's too
    if is_task_call(client, body.messages):  # a front-end's title, tags…: no conversation, no tools
        max_tokens = body.max_completion_tokens or body.max_tokens
        answer = await answer_task(
            resources,
            principal.owner_id,
            body.messages,
            agent=agent,
            model=model,
            max_tokens=max_tokens,
            sampling=sampling,
        )
        return replay_chunks(answer, include_usage) if body.stream else JSONResponse(answer)
    tools = client_tools([t.model_dump() for t in body.tools or []], ours, nested=True)
    options = TurnOptions(
        approvals=False,  # no way to carry an approval here yet: gated tools are not offered
        content=call.content,
        # A chat id decides the conversation; the context is still the client's history, even none.
        history=call.history if call.history is not None or client.chat_id is None else [],
        # The answer the client's history ends with, if stored (in its chat, given a chat id): the
        # message goes below it, a branch when the client edited or regenerated; a chat id's history
        # with no answer is a new first message (an edit of the first one).
        extends_key=call.extends_key,
        after=ROOT if client.chat_id is not None and call.extends_key is None else None,
        system_per_turn=True,
        tools=tools,
        tool_choice=tool_choice(body.tool_choice, [*ours, *(t["name"] for t in tools)]),
        max_tokens=body.max_completion_tokens or body.max_tokens,
        attributes={"api": "chat.completions", "model": model, "metadata": body.metadata, "user": body.user},
        external_id=client.chat_id,
        end_user=client.user_id or body.user,
        sampling=sampling,
    )

    def respond(turn: Turn) -> dict[str, object]:
        return completion(turn, model)

    started = await turns.start(
        TurnRequest(
            owner_id=principal.owner_id,
            message=call.text,
            system=call.system,
            incremental=body.stream,
            idempotency_key=idempotency_key,
            fingerprint={"api": "chat.completions", **body.model_dump(mode="json")},
            options=options,
            history_key=call.answer_key,
            agent=agent,
            allowed_agents=principal.agents,
        ),
        transactions,
        respond=respond,
    )
    if isinstance(started, Replay):
        return replay_chunks(started.response, include_usage) if body.stream else JSONResponse(started.response)
    if not body.stream:
        return CompletionJSONResponse(started, model)
    run = await turns.start_run(started, ChatChunks(model, include_usage))
    # Leaving cancels the turn (the upstream call with it); the partial answer is recorded.
    return RunStreamResponse(run, ping_seconds=settings.sse_ping_seconds, encode=chunk_frames)
