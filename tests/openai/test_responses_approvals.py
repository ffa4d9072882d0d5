"""Responses approvals through the official SDK: a gated call is an mcp_approval_request item, the
response ends completed, and mcp_approval_response items with previous_response_id continue the
same paused turn as a new response; both responses retrieve as they were answered."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI, BadRequestError, ConflictError
from openai.types.responses import Response, ResponseInputParam

from app.core.config import Settings
from app.main import create_app
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live, live_server
from tests.openai.conftest import conversations, message_id, messages, sdk

CALC = '[[tool:calculator {"expression": "2+2"}]] [[tool:current_time {"timezone": "UTC"}]] compute'


@pytest.fixture
async def gated(settings: Settings) -> AsyncIterator[tuple[Live, AsyncOpenAI]]:
    app = create_app(settings.model_copy(update={"agent_approval_tools": "calc*"}))
    async with live_server(app) as live, sdk(live, await make_key(live.state)) as client:
        yield live, client


def kinds(response: Response) -> list[str]:
    return [item.type for item in response.output]


def shown(response: Any) -> list[tuple[Any, ...]]:
    """What a client shows of a response's output (the stream helper's parsed copy has extra fields)."""
    return [(i.id, i.type, getattr(i, "status", None), getattr(i, "output", None)) for i in response.output]


def approval(response: Response, approve: bool, reason: str | None = None) -> ResponseInputParam:
    [request] = [item for item in response.output if item.type == "mcp_approval_request"]
    answer: dict[str, Any] = {"type": "mcp_approval_response", "approval_request_id": request.id, "approve": approve}
    if reason is not None:
        answer["reason"] = reason
    return [answer]  # type: ignore[list-item]


async def test_an_approval_round_trip_is_two_responses_of_one_turn(
    gated: tuple[Live, AsyncOpenAI], llm_server: FakeLLMServer
) -> None:
    live, oai = gated
    paused = await oai.responses.create(model="agentchat", input=CALC)
    assert paused.status == "completed"
    assert kinds(paused) == ["message", "mcp_approval_request", "mcp_call"]
    request: Any = paused.output[1]
    assert (request.server_label, request.name, json.loads(request.arguments)) == (
        "agentchat",
        "calculator",
        {"expression": "2+2"},
    )
    assert request.id.startswith("mcpr_")
    ran: Any = paused.output[2]
    assert (ran.name, ran.status) == ("current_time", "completed")  # the other call ran
    assert len(llm_server.state.request_bodies()) == 1

    done = await oai.responses.create(
        model="agentchat", previous_response_id=paused.id, input=approval(paused, approve=True)
    )
    # A new response, as OpenAI answers an approval: its input is the approval, its output what followed.
    assert done.id == f"{paused.id}_1"
    assert done.previous_response_id == paused.id
    assert done.status == "completed"
    assert kinds(done) == ["mcp_call", "message"]
    call: Any = done.output[0]
    assert (call.name, call.output, call.status, call.approval_request_id) == (
        "calculator",
        "4",
        "completed",
        request.id,
    )
    assert "tool results:" in done.output_text
    assert done.usage is not None
    assert done.usage.output_tokens > 0
    # Both ids retrieve as they were answered; the continuation's input is the approval response.
    assert (await oai.responses.retrieve(paused.id)).model_dump() == paused.model_dump()
    assert (await oai.responses.retrieve(done.id)).model_dump() == done.model_dump()
    items = await oai.responses.input_items.list(done.id)
    assert [(i.type, getattr(i, "approve", None)) for i in items.data] == [("mcp_approval_response", True)]
    # One turn: the same answer row, complete; the history the model got is valid, and a next turn chains.
    [conversation] = await conversations(live.state)
    rows = await messages(live.state, conversation.id)
    assert [(r.role, r.status) for r in rows] == [("user", "complete"), ("assistant", "complete")]
    assert rows[-1].id == message_id(paused.id)
    nxt = await oai.responses.create(model="agentchat", input="and now?", previous_response_id=done.id)
    assert nxt.status == "completed"
    assert llm_server.state.rejections == []


async def test_a_streamed_denial_carries_the_reason(gated: tuple[Live, AsyncOpenAI], llm_server: FakeLLMServer) -> None:
    _, oai = gated
    async with oai.responses.stream(model="agentchat", input=CALC) as stream:
        events = [event async for event in stream]
        paused = await stream.get_final_response()
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert "mcp_approval_request" in added
    assert events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert kinds(paused) == kinds(await oai.responses.retrieve(paused.id))

    async with oai.responses.stream(
        model="agentchat", previous_response_id=paused.id, input=approval(paused, False, "not now")
    ) as stream:
        more = [event async for event in stream]
        denied = await stream.get_final_response()
    assert denied.id == f"{paused.id}_1"
    assert more[-1].type == "response.completed"
    call: Any = denied.output[0]
    assert (call.type, call.name, call.status) == ("mcp_call", "calculator", "failed")
    assert "not now" in call.model_dump()["error"]["content"]
    again = await oai.responses.retrieve(denied.id)
    assert (shown(again), again.output_text) == (shown(denied), denied.output_text)
    # What the model read: the denial, with the reason, as the call's result.
    last = llm_server.state.request_bodies()[-1]["messages"]
    results = [b for m in last for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
    assert any("not now" in json.dumps(b["content"]) and b.get("is_error") for b in results)
    assert llm_server.state.rejections == []


async def test_approval_responses_that_cannot_continue(gated: tuple[Live, AsyncOpenAI]) -> None:
    _, oai = gated
    paused = await oai.responses.create(model="agentchat", input=CALC)
    unknown: ResponseInputParam = [
        {"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}
    ]
    with pytest.raises(BadRequestError) as missing:  # what would it continue?
        await oai.responses.create(model="agentchat", input=unknown)
    assert missing.value.body["param"] == "previous_response_id"  # type: ignore[index]
    stray: ResponseInputParam = [
        *approval(paused, approve=True),
        {"role": "user", "content": "and this"},
    ]
    with pytest.raises(BadRequestError) as mixed:
        await oai.responses.create(model="agentchat", previous_response_id=paused.id, input=stray)
    assert mixed.value.body["param"] == "input[1]"  # type: ignore[index]
    wrong: ResponseInputParam = [{"type": "mcp_approval_response", "approval_request_id": "mcpr_nope", "approve": True}]
    with pytest.raises(ConflictError):  # not a pending call
        await oai.responses.create(model="agentchat", previous_response_id=paused.id, input=wrong)
    await oai.responses.create(model="agentchat", previous_response_id=paused.id, input=approval(paused, True))
    with pytest.raises(ConflictError):  # decided already
        await oai.responses.create(model="agentchat", previous_response_id=paused.id, input=approval(paused, True))


async def test_chat_completions_still_offers_no_gated_tool(
    gated: tuple[Live, AsyncOpenAI], llm_server: FakeLLMServer
) -> None:
    _, oai = gated
    await oai.chat.completions.create(model="agentchat", messages=[{"role": "user", "content": "hi"}])
    offered = [t["name"] for t in llm_server.state.request_bodies()[-1]["tools"]]
    assert "calculator" not in offered


async def test_a_background_continuation_is_followed_by_its_own_id(gated: tuple[Live, AsyncOpenAI]) -> None:
    _, oai = gated
    paused = await oai.responses.create(model="agentchat", input=CALC, background=True)
    while paused.status in ("queued", "in_progress"):
        paused = await oai.responses.retrieve(paused.id)
    assert (paused.status, kinds(paused)) == ("completed", ["message", "mcp_approval_request", "mcp_call"])
    begun = await oai.responses.create(
        model="agentchat", previous_response_id=paused.id, input=approval(paused, True), background=True
    )
    assert (begun.id, begun.status) == (f"{paused.id}_1", "in_progress")
    # Its events, from its own run (not the paused response's), replayed from the start.
    stream = await oai.responses.retrieve(begun.id, stream=True, starting_after=0)
    events = [event async for event in stream]
    assert events[0].sequence_number == 1
    assert events[-1].type == "response.completed"
    final: Any = events[-1]
    assert final.response.id == begun.id
    assert [item.type for item in final.response.output] == ["mcp_call", "message"]
    # The paused response still reads as it was answered; its own events too.
    again = await oai.responses.retrieve(paused.id, stream=True)
    first = [event async for event in again]
    assert first[-1].type == "response.completed"
    assert [item.type for item in first[-1].response.output] == kinds(paused)


async def test_the_continuation_brings_its_own_tools_and_instructions(
    gated: tuple[Live, AsyncOpenAI], llm_server: FakeLLMServer
) -> None:
    """As any response, the one that answers the approvals sends its own tools, instructions and
    sampling to the model (the Agents SDK resends its function tools on every call)."""
    _, oai = gated
    weather = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    paused = await oai.responses.create(model="agentchat", input=CALC, tools=[weather])  # type: ignore[list-item]
    done = await oai.responses.create(
        model="agentchat",
        previous_response_id=paused.id,
        input=approval(paused, approve=True),
        tools=[weather],  # type: ignore[list-item]
        instructions="Answer in one word.",
        max_output_tokens=64,
        temperature=0.2,
    )
    assert done.status == "completed"
    sent = llm_server.state.request_bodies()[-1]
    assert "get_weather" in [t["name"] for t in sent["tools"]]
    assert "Answer in one word." in json.dumps(sent["system"])
    assert sent["max_tokens"] == 64
    assert sent["temperature"] == 0.2
    assert llm_server.state.rejections == []


async def test_a_client_that_resends_the_whole_context_continues_the_paused_turn(
    gated: tuple[Live, AsyncOpenAI], llm_server: FakeLLMServer
) -> None:
    """The Agents SDK's default: no previous_response_id, the whole history (its input, the paused
    response's output items) then the approval responses. The approval requests name the paused turn,
    the history is not stored again, and the model sees it once."""
    live, oai = gated
    paused = await oai.responses.create(model="agentchat", input=CALC)
    context: list[Any] = [
        {"type": "message", "role": "user", "content": CALC},
        *[item.model_dump(exclude_none=True) for item in paused.output],
        *approval(paused, approve=True),
    ]
    done = await oai.responses.create(model="agentchat", input=context)
    assert done.id == f"{paused.id}_1"
    assert done.status == "completed"
    assert kinds(done) == ["mcp_call", "message"]
    [conversation] = await conversations(live.state)
    rows = await messages(live.state, conversation.id)
    assert [r.role for r in rows] == ["user", "assistant"]  # one turn, its history stored once
    sent = llm_server.state.request_bodies()[-1]["messages"]
    assert json.dumps(sent).count("compute") == 1
    assert llm_server.state.rejections == []
    # Anything new before the decisions is refused, never dropped: after the resent requests, or
    # with previous_response_id (which chains: nothing is resent).
    paused = await oai.responses.create(model="agentchat", input=CALC)
    output = [item.model_dump(exclude_none=True) for item in paused.output]
    hidden: list[Any] = [*output, {"role": "user", "content": "also this"}, *approval(paused, True)]
    with pytest.raises(BadRequestError) as refused:
        await oai.responses.create(model="agentchat", input=hidden)
    assert refused.value.body["param"] == "input[0]"  # type: ignore[index]
    chained: list[Any] = [{"role": "user", "content": "also this"}, *approval(paused, True)]
    with pytest.raises(BadRequestError) as refused:
        await oai.responses.create(model="agentchat", previous_response_id=paused.id, input=chained)
    assert refused.value.body["param"] == "input[0]"  # type: ignore[index]
    # A stray message after the approvals is still refused: it would be a new turn.
    stray = [*context, {"role": "user", "content": "and this"}]
    with pytest.raises(BadRequestError) as refused:
        await oai.responses.create(model="agentchat", input=stray)
    assert refused.value.body["param"] == f"input[{len(context)}]"  # type: ignore[index]
