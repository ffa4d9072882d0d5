"""Human in the loop: a turn whose model calls a gated tool pauses (nothing held), and whichever
replica receives the decisions continues the same turn; every history stays valid for the model."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.models import Message
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.helpers import sse_events

CALC = '[[tool:calculator {"expression": "2+2"}]] [[tool:current_time {"timezone": "UTC"}]] compute'


@pytest.fixture
async def gated(settings: Settings) -> AsyncIterator[tuple[Resources, httpx.AsyncClient, dict[str, str]]]:
    async with running_app(settings.model_copy(update={"agent_approval_tools": "calc*"})) as (_, state, client):
        yield state, client, {"Authorization": f"Bearer {await make_key(state)}"}


async def pause(client: httpx.AsyncClient, auth: dict[str, str]) -> dict[str, Any]:
    r = await client.post("/chat", json={"message": CALC}, headers=auth)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert body["stop_reason"] == "awaiting_approval"
    return body


async def answer_row(state: Resources, message_id: str) -> Message:
    async with state.sessions() as session:
        return (await session.execute(select(Message).where(Message.id == uuid.UUID(message_id)))).scalar_one()


def decide(body: dict[str, Any], **decision: Any) -> dict[str, Any]:
    [pending] = body["pending_approvals"]
    return {"decisions": [{"tool_use_id": pending["tool_use_id"], **decision}]}


async def test_a_gated_call_pauses_the_turn_and_an_approval_continues_the_same_turn(
    gated: tuple[Resources, httpx.AsyncClient, dict[str, str]], llm_server: FakeLLMServer
) -> None:
    state, client, auth = gated
    paused = await pause(client, auth)
    [pending] = paused["pending_approvals"]
    assert (pending["name"], pending["input"]) == ("calculator", {"expression": "2+2"})
    # The other call ran; the gated one did not.
    calls = {c["name"]: c for c in paused["message"]["tool_calls"]}
    assert calls["current_time"]["result"] is not None
    assert calls["calculator"]["result"] is None
    row = await answer_row(state, paused["message"]["id"])
    assert row.status == "awaiting_approval"
    # Nothing held while paused: no turn in flight, the conversation's lock free, no pooled connection out.
    assert state.lifecycle.in_flight == 0
    assert state.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    history = (await client.get(f"/conversations/{paused['conversation_id']}/messages", headers=auth)).json()
    assert history["items"][-1]["status"] == "awaiting_approval"
    assert history["items"][-1]["pending_approvals"][0]["tool_use_id"] == pending["tool_use_id"]

    cid = paused["conversation_id"]
    done = await client.post(f"/conversations/{cid}/approvals", json=decide(paused, approve=True), headers=auth)
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["message"]["id"] == paused["message"]["id"]  # the same answer, continued
    assert body["message"]["status"] == "complete"
    assert body["stop_reason"] == "end_turn"
    assert body["pending_approvals"] == []
    calls = {c["name"]: c for c in body["message"]["tool_calls"]}
    assert calls["calculator"]["result"] == "4"
    assert "tool results:" in body["message"]["content"]
    assert llm_server.state.rejections == []  # every history the model got was valid
    assert (await answer_row(state, paused["message"]["id"])).status == "complete"


async def test_an_approval_with_edited_input_runs_what_the_person_wrote(
    gated: tuple[Resources, httpx.AsyncClient, dict[str, str]], llm_server: FakeLLMServer
) -> None:
    state, client, auth = gated
    paused = await pause(client, auth)
    edit = decide(paused, approve=True, input={"expression": "6*7"})
    done = await client.post(f"/conversations/{paused['conversation_id']}/approvals", json=edit, headers=auth)
    calls = {c["name"]: c for c in done.json()["message"]["tool_calls"]}
    assert calls["calculator"] | {"id": None} == {
        "id": None,
        "name": "calculator",
        "input": {"expression": "6*7"},
        "result": "42",
        "is_error": False,
    }
    assert llm_server.state.rejections == []


async def test_a_denial_reaches_the_model_with_its_reason(
    gated: tuple[Resources, httpx.AsyncClient, dict[str, str]], llm_server: FakeLLMServer
) -> None:
    _, client, auth = gated
    paused = await pause(client, auth)
    no = decide(paused, approve=False, reason="not today")
    done = await client.post(f"/conversations/{paused['conversation_id']}/approvals", json=no, headers=auth)
    calls = {c["name"]: c for c in done.json()["message"]["tool_calls"]}
    assert calls["calculator"]["is_error"] is True
    assert "not today" in calls["calculator"]["result"]
    last = json.dumps(llm_server.state.request_bodies()[-1]["messages"][-1])
    assert "not today" in last
    assert llm_server.state.rejections == []


async def test_wrong_decisions_are_refused_and_change_nothing(
    gated: tuple[Resources, httpx.AsyncClient, dict[str, str]],
) -> None:
    state, client, auth = gated
    paused = await pause(client, auth)
    url = f"/conversations/{paused['conversation_id']}/approvals"
    unknown = await client.post(url, json={"decisions": [{"tool_use_id": "toolu_nope", "approve": True}]}, headers=auth)
    assert (unknown.status_code, unknown.json()["error"]["type"]) == (409, "not_pending")
    other = {"Authorization": f"Bearer {await make_key(state, 'other')}"}
    assert (await client.post(url, json=decide(paused, approve=True), headers=other)).status_code == 404
    assert (await answer_row(state, paused["message"]["id"])).status == "awaiting_approval"
    assert (await client.post(url, json=decide(paused, approve=True), headers=auth)).status_code == 200
    again = await client.post(url, json=decide(paused, approve=True), headers=auth)
    assert (again.status_code, again.json()["error"]["type"]) == (409, "not_pending")


async def test_a_decision_list_that_leaves_a_call_undecided_is_422(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    both = settings.model_copy(update={"agent_approval_tools": "calculator,current_time"})
    async with running_app(both) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        paused = (await client.post("/chat", json={"message": CALC}, headers=auth)).json()
        assert len(paused["pending_approvals"]) == 2
        first = paused["pending_approvals"][0]["tool_use_id"]
        url = f"/conversations/{paused['conversation_id']}/approvals"
        half = {"decisions": [{"tool_use_id": first, "approve": True}]}
        r = await client.post(url, json=half, headers=auth)
        assert (r.status_code, r.json()["error"]["type"]) == (422, "undecided_calls")
        everything = {
            "decisions": [{"tool_use_id": p["tool_use_id"], "approve": True} for p in paused["pending_approvals"]]
        }
        assert (await client.post(url, json=everything, headers=auth)).status_code == 200
        assert llm_server.state.rejections == []


async def test_a_new_message_while_paused_denies_the_pending_calls_and_goes_on(
    gated: tuple[Resources, httpx.AsyncClient, dict[str, str]], llm_server: FakeLLMServer
) -> None:
    state, client, auth = gated
    paused = await pause(client, auth)
    cid = paused["conversation_id"]
    r = await client.post("/chat", json={"message": "never mind", "conversation_id": cid}, headers=auth)
    assert r.status_code == 200, r.text
    row = await answer_row(state, paused["message"]["id"])
    assert (row.status, row.stop_reason) == ("complete", "approval_superseded")
    denied = [b for b in row.content if b.get("type") == "tool_result" and b.get("is_error")]
    assert "new message" in denied[0]["content"]
    assert llm_server.state.rejections == []
    decided = await client.post(f"/conversations/{cid}/approvals", json=decide(paused, approve=True), headers=auth)
    assert decided.status_code == 409


async def test_a_pause_times_out_into_denials(settings: Settings, llm_server: FakeLLMServer) -> None:
    quick = settings.model_copy(update={"agent_approval_tools": "calc*", "approval_timeout_seconds": 0.3})
    async with running_app(quick) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        paused = await pause(client, auth)
        for _ in range(50):
            row = await answer_row(state, paused["message"]["id"])
            if row.status != "awaiting_approval":
                break
            await asyncio.sleep(0.1)
        assert (row.status, row.stop_reason) == ("complete", "approval_timeout")
        url = f"/conversations/{paused['conversation_id']}/approvals"
        assert (await client.post(url, json=decide(paused, approve=True), headers=auth)).status_code == 409
        # The next turn's history is valid for the model.
        nxt = {"message": "and now?", "conversation_id": paused["conversation_id"]}
        assert (await client.post("/chat", json=nxt, headers=auth)).status_code == 200
        assert llm_server.state.rejections == []


async def test_a_stream_announces_the_pending_calls_and_its_continuation_streams_too(
    gated: tuple[Resources, httpx.AsyncClient, dict[str, str]],
) -> None:
    _, client, auth = gated
    r = await client.post("/chat", json={"message": CALC, "stream": True}, headers=auth)
    events = sse_events(r.text)
    [required] = [e["data"] for e in events if e["event"] == "approval_required"]
    assert required["name"] == "calculator"
    assert events[-1]["event"] == "end"
    assert events[-1]["data"]["stop_reason"] == "awaiting_approval"
    cid = events[0]["data"]["conversation_id"]
    body = {"decisions": [{"tool_use_id": required["tool_use_id"], "approve": True}], "stream": True}
    go = await client.post(f"/conversations/{cid}/approvals", json=body, headers=auth)
    more = sse_events(go.text)
    assert more[0]["event"] == "start"
    assert more[0]["data"]["message_id"] == events[0]["data"]["message_id"]
    assert [e["data"]["content"] for e in more if e["event"] == "tool_result"] == ["4"]
    assert more[-1]["event"] == "end"
    assert more[-1]["data"]["stop_reason"] == "end_turn"


async def test_decisions_racing_on_two_replicas_continue_once(settings: Settings, llm_server: FakeLLMServer) -> None:
    config = settings.model_copy(update={"agent_approval_tools": "calc*"})
    async with running_app(config) as (_, state, a), running_app(config) as (_, _other, b):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        paused = await pause(a, auth)
        url = f"/conversations/{paused['conversation_id']}/approvals"
        body = decide(paused, approve=True)
        answers = await asyncio.gather(a.post(url, json=body, headers=auth), b.post(url, json=body, headers=auth))
        assert sorted(r.status_code for r in answers) == [200, 409]
        assert (await answer_row(state, paused["message"]["id"])).status == "complete"
        assert llm_server.state.rejections == []


async def test_chat_completions_never_offers_a_gated_tool(
    gated: tuple[Resources, httpx.AsyncClient, dict[str, str]], llm_server: FakeLLMServer
) -> None:
    _, client, auth = gated
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "agentchat", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    offered = [t["name"] for t in llm_server.state.request_bodies()[-1]["tools"]]
    assert "calculator" not in offered
    assert "current_time" in offered


async def test_a_paused_answer_keeps_its_trace_on_both_databases(
    settings: Settings, llm_server: FakeLLMServer, tmp_path: Any
) -> None:
    """The traceparent a continuation links to is merged into the paused answer's attributes in one
    statement, its other keys and its updated_at (a claim compares it) kept; Postgres and SQLite."""
    from app.turns.approvals import PAUSED_TRACE, keep_paused_trace
    from tests.fixtures.app import embedded

    for config in (settings, await embedded(settings, tmp_path / "trace.db")):
        gated = config.model_copy(update={"agent_approval_tools": "calc*"})
        async with running_app(gated) as (_, state, client):
            auth = {"Authorization": f"Bearer {await make_key(state)}"}
            paused = await pause(client, auth)
            before = await answer_row(state, paused["message"]["id"])
            async with state.db.transactions() as transactions:
                await keep_paused_trace(transactions, before.id, "00-0123-4567-01")
            after = await answer_row(state, paused["message"]["id"])
            assert (after.attributes or {})[PAUSED_TRACE] == "00-0123-4567-01"
            assert {k: v for k, v in (after.attributes or {}).items() if k != PAUSED_TRACE} == (before.attributes or {})
            assert after.updated_at == before.updated_at
            assert after.status == "awaiting_approval"
