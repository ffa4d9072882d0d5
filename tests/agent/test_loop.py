"""The agent loop against the fake Messages API: tool calls, chains, limits, errors, streaming."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from app.core.config import Settings
from testkit.fake_llm import FakeLLMServer
from tests.helpers import Live, sse_events


def tool(name: str, args: dict[str, Any] | None = None) -> str:
    return f"[[tool:{name} {json.dumps(args or {})}]]"


async def chat(live: Live, key: str, message: str, **extra: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        return await http.post("/chat", json={"message": message, **extra}, headers={"Authorization": f"Bearer {key}"})


async def test_single_tool_call(agent_live: Live, agent_key: str, llm_server: FakeLLMServer) -> None:
    r = await chat(agent_live, agent_key, "what is 6*7? " + tool("calculator", {"expression": "6*7"}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stop_reason"] == "end_turn"
    assert body["message"]["tool_calls"] == [
        {
            "id": body["message"]["tool_calls"][0]["id"],
            "name": "calculator",
            "input": {"expression": "6*7"},
            "result": "42",
            "is_error": False,
        }
    ]
    assert body["message"]["content"] == "Let me use calculator.\n\ntool results: 42"
    first, second = llm_server.state.request_bodies()[-2:]
    offered = {t["name"] for t in first["tools"]}
    assert {"calculator", "current_time", "remember", "recall", "sleepy"} <= offered
    assert "fetch_url" not in offered  # opt-in
    assert second["messages"][-1]["content"][0]["type"] == "tool_result"
    assert body["usage"]["input_tokens"] > 0
    assert llm_server.state.rejections == []


async def test_parallel_tool_calls_run_concurrently(agent_live: Live, agent_key: str) -> None:
    # Each `meet` call waits for the other: sequential execution would time both out.
    r = await chat(agent_live, agent_key, tool("meet") + tool("meet") + tool("calculator", {"expression": "1+1"}))
    calls = r.json()["message"]["tool_calls"]
    assert [(c["name"], c["result"], c["is_error"]) for c in calls] == [
        ("meet", "met 2", False),
        ("meet", "met 2", False),
        ("calculator", "2", False),
    ]


async def test_a_chain_of_steps(agent_live: Live, agent_key: str, llm_server: FakeLLMServer) -> None:
    r = await chat(agent_live, agent_key, "[[tool_chain:3]] " + tool("calculator", {"expression": "2**10"}))
    body = r.json()
    assert body["stop_reason"] == "end_turn"
    assert [c["result"] for c in body["message"]["tool_calls"]] == ["1024"] * 3
    assert len(llm_server.state.request_bodies()) == 4


async def test_step_limit_stops_with_a_clear_reason(settings: Settings, llm_server: FakeLLMServer) -> None:
    from app.main import create_app
    from tests.fixtures.app import make_key
    from tests.helpers import live_server

    async with live_server(create_app(settings.model_copy(update={"agent_max_steps": 2}))) as live:
        key = await make_key(live.state)
        r = await chat(live, key, "[[tool_chain:10]] " + tool("calculator", {"expression": "1"}))
        assert r.status_code == 200
        assert r.json()["stop_reason"] == "max_steps"
        assert len(llm_server.state.request_bodies()) == 2
        # The conversation goes on normally.
        nxt = await chat(live, key, "thanks", conversation_id=r.json()["conversation_id"])
        assert nxt.status_code == 200
        assert llm_server.state.rejections == []


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("nonexistent", {}, "There is no tool named 'nonexistent'"),
        ("calculator", {"expr": "1"}, "Invalid input for calculator: expression: Field required"),
        ("calculator", {"expression": "1/0"}, "Division by zero."),
        ("calculator", {"expression": "__import__('os').system('id')"}, "Unsupported element"),
        ("explode", {}, "The tool explode failed unexpectedly (RuntimeError)."),
        ("quick_timeout", {"seconds": 5}, "The tool quick_timeout timed out after 0.2 seconds."),
        ("current_time", {"timezone": "Mars/Olympus"}, "Unknown time zone"),
    ],
)
async def test_tool_failures_are_error_results_not_500s(
    agent_live: Live, agent_key: str, llm_server: FakeLLMServer, name: str, args: dict[str, Any], expected: str
) -> None:
    r = await chat(agent_live, agent_key, tool(name, args))
    assert r.status_code == 200, r.text
    (call,) = r.json()["message"]["tool_calls"]
    assert call["is_error"] is True
    assert call["result"].startswith(expected)
    sent = llm_server.state.request_bodies()[-1]["messages"][-1]["content"][0]
    assert sent["is_error"] is True
    assert sent["content"].startswith(expected)


async def test_one_failing_tool_does_not_cancel_the_others(agent_live: Live, agent_key: str) -> None:
    r = await chat(agent_live, agent_key, tool("explode") + tool("calculator", {"expression": "3*3"}))
    calls = r.json()["message"]["tool_calls"]
    assert [(c["name"], c["is_error"]) for c in calls] == [("explode", True), ("calculator", False)]
    assert calls[1]["result"] == "9"


async def test_oversized_results_are_capped(agent_live: Live, agent_key: str, llm_server: FakeLLMServer) -> None:
    r = await chat(agent_live, agent_key, tool("huge"))
    assert r.status_code == 200
    sent = llm_server.state.request_bodies()[-1]["messages"][-1]["content"][0]["content"]
    assert len(sent) < 8100
    assert sent.endswith("[truncated 92000 characters]")


async def test_streaming_shows_the_loop(agent_live: Live, agent_key: str) -> None:
    r = await chat(agent_live, agent_key, tool("calculator", {"expression": "5+5"}), stream=True)
    events = sse_events(r.text)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    use, result = kinds.index("tool_use"), kinds.index("tool_result")
    assert 0 < use < result
    assert "delta" in kinds[1:use]
    assert "delta" in kinds[result:]
    assert events[use]["data"]["name"] == "calculator"
    assert events[use]["data"]["input"] == {"expression": "5+5"}
    assert events[result]["data"] == {"tool_use_id": events[use]["data"]["id"], "content": "10", "is_error": False}


async def test_history_replays_tool_calls_and_shows_them(
    agent_live: Live, agent_key: str, llm_server: FakeLLMServer
) -> None:
    first = (await chat(agent_live, agent_key, tool("calculator", {"expression": "2+3"}))).json()
    cid = first["conversation_id"]
    r = await chat(agent_live, agent_key, "and what did you compute?", conversation_id=cid)
    assert r.status_code == 200
    assert r.json()["message"]["content"] == "echo: and what did you compute?"
    sent = llm_server.state.request_bodies()[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert sent[1]["content"][-1]["type"] == "tool_use"
    assert sent[2]["content"][0]["tool_use_id"] == sent[1]["content"][-1]["id"]
    assert llm_server.state.rejections == []
    async with httpx.AsyncClient(base_url=agent_live.url) as http:
        items = (
            await http.get(f"/conversations/{cid}/messages", headers={"Authorization": f"Bearer {agent_key}"})
        ).json()["items"]
    assert [i["role"] for i in items] == ["user", "assistant", "user", "assistant"]
    assert items[1]["tool_calls"][0]["result"] == "5"
    assert items[3]["tool_calls"] == []


async def test_tool_calls_per_step_are_capped(agent_live: Live, agent_key: str, llm_server: FakeLLMServer) -> None:
    cap = agent_live.state.settings.agent_max_tool_calls_per_step
    message = "".join(tool("calculator", {"expression": f"{n}+1"}) for n in range(cap + 3))
    r = await chat(agent_live, agent_key, message)
    assert r.status_code == 200, r.text
    calls = r.json()["message"]["tool_calls"]
    assert [c["result"] for c in calls[:cap]] == [str(n + 1) for n in range(cap)]
    refused = calls[cap:]
    assert len(refused) == 3
    assert all(c["is_error"] and "at most" in c["result"] for c in refused)
    # The model saw every call answered, the refused ones as errors it can act on.
    results = llm_server.state.request_bodies()[-1]["messages"][-1]["content"]
    assert sum(1 for b in results if b["type"] == "tool_result" and b.get("is_error")) == 3
