"""Traces by the GenAI semantic conventions, exported over OTLP/HTTP to a real receiver (the SDK's
own exporter and batch processor, nothing mocked): the span tree of a turn with two tool calls
through a JSON turn, a stream and a /v1 call; a continued traceparent; content only on request;
trace ids on log lines; and nothing at all when OTEL_* is unset."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.core import telemetry
from app.core.config import Settings
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import embedded, make_key, running_app
from tests.fixtures.otlp import OtlpReceiver, ReceivedSpan
from tests.helpers import sse_events

TWO_TOOLS = '[[tool:calculator {"expression": "6*7"}]] [[tool:current_time {}]] the secret plan'
SERVER, CLIENT = 2, 3  # OTLP SpanKind


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def otel_env(monkeypatch: pytest.MonkeyPatch, receiver: OtlpReceiver) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "agentchat-test")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")


@pytest.fixture
async def traced(
    settings: Settings, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FastAPI, Resources, httpx.AsyncClient]]:
    otel_env(monkeypatch, receiver)
    async with running_app(settings) as served:
        yield served


async def collect(receiver: OtlpReceiver, done: Callable[[list[ReceivedSpan]], bool]) -> list[ReceivedSpan]:
    """Flush the app's provider until the receiver has what `done` wants."""
    for _ in range(200):
        active = telemetry.active()
        assert active is not None
        await asyncio.to_thread(active.provider.force_flush)
        spans = receiver.spans()
        if done(spans):
            return spans
        await asyncio.sleep(0.05)
    raise AssertionError(f"spans never arrived: {sorted(s.name for s in receiver.spans())}")


def of_trace(spans: list[ReceivedSpan], trace_id: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.trace_id == trace_id]


def named(spans: list[ReceivedSpan], prefix: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.name.startswith(prefix)]


def agent_turn_done(spans: list[ReceivedSpan]) -> bool:
    return (
        bool(named(spans, "invoke_agent"))
        and len(named(spans, "execute_tool")) >= 2
        and bool([s for s in spans if s.kind == SERVER and s.scope.startswith("opentelemetry.instrumentation.asgi")])
    )


def assert_turn_tree(
    spans: list[ReceivedSpan], *, conversation_id: str, owner_id: str, tool_ids: list[str], request_id: str | None
) -> ReceivedSpan:
    """The tree of one turn with two tool calls: server → invoke_agent → (chat ×2, execute_tool ×2)."""
    (agent,) = named(spans, "invoke_agent")
    assert agent.name == "invoke_agent agentchat"
    a = agent.attributes
    assert a["gen_ai.operation.name"] == "invoke_agent"
    assert a["gen_ai.agent.name"] == "agentchat"
    assert a["gen_ai.provider.name"] == "anthropic"
    assert a["gen_ai.request.model"] == "claude-test"
    assert a["gen_ai.conversation.id"] == conversation_id
    assert a["agentchat.owner_id"] == owner_id
    if request_id is not None:
        assert a["agentchat.request_id"] == request_id
    assert a["gen_ai.usage.input_tokens"] > 0
    assert a["gen_ai.usage.output_tokens"] > 0
    by_id = {s.span_id: s for s in spans}
    parent = by_id[agent.parent_id]
    while parent.kind != SERVER:  # the server span, maybe through its own children
        parent = by_id[parent.parent_id]
    assert parent.scope.startswith("opentelemetry.instrumentation.asgi")

    chats = named(spans, "chat ")
    assert [c.name for c in chats] == ["chat claude-test"] * 2
    assert sorted(c.attributes["gen_ai.response.finish_reasons"][0] for c in chats) == ["end_turn", "tool_use"]
    for chat in chats:
        c = chat.attributes
        assert chat.parent_id == agent.span_id
        assert chat.kind == CLIENT
        assert c["gen_ai.operation.name"] == "chat"
        assert c["gen_ai.provider.name"] == "anthropic"
        assert c["gen_ai.request.model"] == c["gen_ai.response.model"] == "claude-test"
        assert c["gen_ai.usage.input_tokens"] > 0
        assert c["gen_ai.usage.output_tokens"] > 0
        assert c["gen_ai.usage.cache_read.input_tokens"] >= 0
        assert c["gen_ai.usage.cache_creation.input_tokens"] >= 0
        assert c["gen_ai.conversation.id"] == conversation_id
        assert c["gen_ai.agent.name"] == "agentchat"

    tools = named(spans, "execute_tool")
    assert sorted(t.name for t in tools) == ["execute_tool calculator", "execute_tool current_time"]
    assert sorted(t.attributes["gen_ai.tool.call.id"] for t in tools) == sorted(tool_ids)
    for tool in tools:
        assert tool.parent_id == agent.span_id
        assert tool.attributes["gen_ai.operation.name"] == "execute_tool"
        assert tool.attributes["gen_ai.tool.name"] == tool.name.removeprefix("execute_tool ")
        assert tool.attributes["gen_ai.tool.type"] == "function"
    # The database's round trips, from asyncpg's instrumentation, in the same trace.
    assert [s for s in spans if s.scope == "opentelemetry.instrumentation.asyncpg"]
    return agent


def assert_no_content(spans: list[ReceivedSpan], *secrets: str) -> None:
    for span in spans:
        for name, value in span.attributes.items():
            assert name not in ("gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.call.arguments")
            for secret in secrets:
                assert secret not in json.dumps(value), (span.name, name)


def tool_ids(message: dict[str, Any]) -> list[str]:
    """The ids of an answer's tool calls, as GET /conversations/{id}/messages lists them."""
    return [call["id"] for call in message["tool_calls"]]


async def owner_of(state: Resources, key: str) -> str:
    from app.auth.keys import hash_key
    from app.auth.repository import find_active

    async with state.engine.connect() as conn:
        found = await find_active(conn, hash_key(key))
    assert found is not None
    return str(found[0])


async def test_a_json_turn_with_two_tool_calls_is_one_span_tree(
    traced: tuple[FastAPI, Resources, httpx.AsyncClient],
    receiver: OtlpReceiver,
    llm_server: FakeLLMServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, state, client = traced
    key = await make_key(state)
    capsys.readouterr()
    auth = {"Authorization": f"Bearer {key}"}
    r = await client.post("/chat", json={"message": TWO_TOOLS}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    request_id = r.headers["x-request-id"]
    spans = await collect(receiver, agent_turn_done)
    (agent,) = named(spans, "invoke_agent")
    trace = of_trace(spans, agent.trace_id)
    listed = await client.get(f"/conversations/{body['conversation_id']}/messages", headers=auth)
    calls = tool_ids(listed.json()["items"][-1])
    assert_turn_tree(
        trace,
        conversation_id=body["conversation_id"],
        owner_id=await owner_of(state, key),
        tool_ids=calls,
        request_id=request_id,
    )
    assert_no_content(spans, "secret plan", key)
    # Redis round trips (the key's limits, the conversation's lock) from redis' instrumentation.
    assert [s for s in trace if s.scope == "opentelemetry.instrumentation.redis"]
    # Each model call carried the trace onward: its traceparent names its own chat span.
    chats = {s.span_id for s in named(trace, "chat ")}
    sent = [tp for tp in llm_server.state.traceparents if tp is not None]
    assert len(sent) == 2
    for traceparent in sent:
        _, trace_id, span_id, _ = traceparent.split("-")
        assert trace_id == agent.trace_id
        assert span_id in chats
    # Every log line of the request carries its trace and span ids.
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    ours = [line for line in lines if line.get("request_id") == request_id]
    assert ours, lines
    assert all(line.get("trace_id") == agent.trace_id and len(line.get("span_id", "")) == 16 for line in ours), ours
    assert {line["span_id"] for line in ours if line["event"] == "agent.tool.finished"} <= {
        s.span_id for s in named(trace, "execute_tool")
    }


async def test_a_stream_and_a_v1_call_make_the_same_tree(
    traced: tuple[FastAPI, Resources, httpx.AsyncClient], receiver: OtlpReceiver
) -> None:
    _, state, client = traced
    key = await make_key(state)
    auth = {"Authorization": f"Bearer {key}"}
    owner = await owner_of(state, key)

    r = await client.post("/chat", json={"message": TWO_TOOLS, "stream": True}, headers=auth)
    assert r.status_code == 200, r.text
    events = sse_events(r.text)
    conversation_id = events[0]["data"]["conversation_id"]
    calls = [e["data"]["id"] for e in events if e["event"] == "tool_use"]
    spans = await collect(receiver, agent_turn_done)
    (agent,) = named(spans, "invoke_agent")
    assert_turn_tree(
        of_trace(spans, agent.trace_id),
        conversation_id=conversation_id,
        owner_id=owner,
        tool_ids=calls,
        request_id=r.headers["x-request-id"],
    )
    assert_no_content(spans, "secret plan", key)

    receiver.clear()
    r = await client.post(
        "/v1/chat/completions",
        json={"model": "agentchat", "messages": [{"role": "user", "content": TWO_TOOLS}]},
        headers=auth,
    )
    assert r.status_code == 200, r.text
    spans = await collect(receiver, agent_turn_done)
    (agent,) = named(spans, "invoke_agent")
    trace = of_trace(spans, agent.trace_id)
    conversation_id = agent.attributes["gen_ai.conversation.id"]
    messages = (await client.get(f"/conversations/{conversation_id}/messages", headers=auth)).json()["items"]
    assert_turn_tree(
        trace,
        conversation_id=conversation_id,
        owner_id=owner,
        tool_ids=tool_ids(messages[-1]),
        request_id=r.headers["x-request-id"],
    )
    assert_no_content(spans, "secret plan", key)


async def test_an_incoming_traceparent_is_continued(
    traced: tuple[FastAPI, Resources, httpx.AsyncClient], receiver: OtlpReceiver
) -> None:
    _, state, client = traced
    auth = {"Authorization": f"Bearer {await make_key(state)}"}
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    headers = {**auth, "traceparent": f"00-{trace_id}-{parent}-01"}
    r = await client.post("/chat", json={"message": "[[reply:hello]]"}, headers=headers)
    assert r.status_code == 200, r.text
    spans = await collect(receiver, lambda spans: bool(named(spans, "invoke_agent")))
    (server,) = [s for s in spans if s.kind == SERVER]
    assert (server.trace_id, server.parent_id) == (trace_id, parent)
    (agent,) = named(spans, "invoke_agent")
    assert agent.trace_id == trace_id
    assert [s.trace_id for s in named(spans, "chat ")] == [trace_id]


async def test_content_is_recorded_only_when_asked(
    settings: Settings, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    otel_env(monkeypatch, receiver)
    monkeypatch.setenv("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "true")
    async with running_app(settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        r = await client.post("/chat", json={"message": TWO_TOOLS}, headers=auth)
        assert r.status_code == 200, r.text
        spans = await collect(receiver, agent_turn_done)
    first = named(spans, "chat ")[0].attributes
    assert "the secret plan" in first["gen_ai.input.messages"]
    assert "gen_ai.output.messages" in first
    calculator = [s for s in spans if s.name == "execute_tool calculator"][0].attributes
    assert json.loads(calculator["gen_ai.tool.call.arguments"]) == {"expression": "6*7"}
    assert calculator["gen_ai.tool.call.result"] == "42"


async def test_without_otel_variables_nothing_is_built(
    settings: Settings, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(name, raising=False)
    async with running_app(settings) as (app, state, client):
        assert telemetry.active() is None
        assert not any("OpenTelemetry" in str(m.cls) for m in app.user_middleware)
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        r = await client.post("/chat", json={"message": TWO_TOOLS}, headers=auth)
        assert r.status_code == 200, r.text
    assert receiver.requests == 0
    assert not telemetry.configured({"OTEL_SERVICE_NAME": "x"})
    assert not telemetry.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_SDK_DISABLED": "true"})
    assert not telemetry.configured({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x", "OTEL_TRACES_EXPORTER": "none"})
    assert telemetry.configured({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://x"})


async def test_following_a_run_links_to_the_trace_that_started_it(
    traced: tuple[FastAPI, Resources, httpx.AsyncClient], receiver: OtlpReceiver
) -> None:
    _, state, client = traced
    auth = {"Authorization": f"Bearer {await make_key(state)}"}
    streamed = await client.post("/chat", json={"message": "[[reply:hello]]", "stream": True}, headers=auth)
    assert streamed.status_code == 200, streamed.text
    run_id = sse_events(streamed.text)[0]["data"]["run_id"]
    followed = await client.get(f"/runs/{run_id}/events", headers=auth)
    assert followed.status_code == 200, followed.text
    assert sse_events(followed.text)[-1]["event"] == "end"
    spans = await collect(receiver, lambda spans: any(s.kind == SERVER and s.links for s in spans))
    (agent,) = named(spans, "invoke_agent")
    (follower,) = [s for s in spans if s.kind == SERVER and s.links]
    assert follower.trace_id != agent.trace_id
    ((linked_trace, linked_span),) = follower.links
    assert linked_trace == agent.trace_id
    started = [s for s in spans if s.span_id == linked_span]
    assert started
    assert started[0].kind == SERVER  # the request that started the run


async def test_a_turn_continued_after_an_approval_is_an_invoke_agent_span_of_its_own(
    settings: Settings, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    otel_env(monkeypatch, receiver)
    gated = settings.model_copy(update={"agent_approval_tools": "calc*"})
    async with running_app(gated) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        paused = await client.post("/chat", json={"message": TWO_TOOLS}, headers=auth)
        assert paused.status_code == 200, paused.text
        body = paused.json()
        assert body["stop_reason"] == "awaiting_approval"
        [pending] = body["pending_approvals"]
        decisions = {"decisions": [{"tool_use_id": pending["tool_use_id"], "approve": True}]}
        cid = body["conversation_id"]
        done = await client.post(f"/conversations/{cid}/approvals", json=decisions, headers=auth)
        assert done.status_code == 200, done.text
        spans = await collect(receiver, lambda spans: len(named(spans, "invoke_agent")) == 2)
    first, second = sorted(
        named(spans, "invoke_agent"),
        key=lambda s: s.attributes["agentchat.request_id"] != paused.headers["x-request-id"],
    )
    assert first.attributes["agentchat.request_id"] == paused.headers["x-request-id"]
    assert second.attributes["agentchat.request_id"] == done.headers["x-request-id"]
    assert first.trace_id != second.trace_id  # each its own request's trace
    assert list(second.links) == [(first.trace_id, first.span_id)]  # the decisions' trace leads to the pause's
    assert first.attributes["gen_ai.conversation.id"] == second.attributes["gen_ai.conversation.id"] == cid
    assert first.attributes["gen_ai.response.finish_reasons"] == ["awaiting_approval"]
    assert second.attributes["gen_ai.response.finish_reasons"] == ["end_turn"]
    # The approved call runs in the continuation, then the model is called once more.
    (calculator,) = [s for s in spans if s.name == "execute_tool calculator"]
    assert calculator.parent_id == second.span_id
    assert calculator.attributes["gen_ai.tool.call.id"] == pending["tool_use_id"]
    assert [s.parent_id for s in named(spans, "chat ")].count(second.span_id) == 1


async def test_on_sqlite_the_statements_are_spans_of_the_turn(
    settings: Settings, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    otel_env(monkeypatch, receiver)
    lite = await embedded(settings, tmp_path / "traced.db")
    async with running_app(lite) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        r = await client.post("/chat", json={"message": TWO_TOOLS}, headers=auth)
        assert r.status_code == 200, r.text
        spans = await collect(receiver, agent_turn_done)
    (agent,) = named(spans, "invoke_agent")
    statements = [s for s in of_trace(spans, agent.trace_id) if s.scope == "opentelemetry.instrumentation.sqlalchemy"]
    assert len(statements) >= 2, sorted({(s.scope, s.name, s.trace_id == agent.trace_id) for s in spans})


async def test_an_mcp_tool_call_carries_the_trace_to_the_server(
    settings: Settings, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.core.mcp_config import parse_mcp_servers
    from tests.agent.mcp_server import McpServerProcess

    otel_env(monkeypatch, receiver)
    with McpServerProcess().running() as server:
        servers = parse_mcp_servers([{"name": "tracker", "url": server.url, "timeout": 5.0}])
        configured = settings.model_copy(update={"mcp_servers": servers, "mcp_connect_timeout": 5.0})
        async with running_app(configured) as (_, state, client):
            auth = {"Authorization": f"Bearer {await make_key(state)}"}
            for _ in range(100):  # the server's tools join once it is connected
                agents = (await client.get("/agents", headers=auth)).json()["items"]
                if "tracker__echo" in agents[0]["tools"]:
                    break
                await asyncio.sleep(0.05)
            r = await client.post("/chat", json={"message": '[[tool:tracker__echo {"text": "hi"}]]'}, headers=auth)
            assert r.status_code == 200, r.text
            spans = await collect(receiver, lambda spans: bool(named(spans, "execute_tool tracker__echo")))
        seen = await server.state()
    (tool,) = named(spans, "execute_tool tracker__echo")
    assert tool.attributes["gen_ai.tool.type"] == "extension"
    assert tool.attributes["gen_ai.tool.name"] == "tracker__echo"
    # The MCP SDK sent the trace on in the request's _meta: the server's work is a child of this span.
    assert f"00-{tool.trace_id}-{tool.span_id}" in [tp.rsplit("-", 1)[0] for tp in seen["traceparents"]]
