"""Several agents in one deployment (AGENTS): each turn reaches its agent's upstream with its model,
prompt and tools; conversations stick to their agent; keys may be limited to some agents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import openai
import pytest

from app.agent.tools.base import Tool
from app.core.agents_config import parse_agents
from app.core.config import Settings
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.helpers import sse_events

AGENTS: dict[str, Any] = {
    "default": "assistant",
    "agents": [
        {
            "name": "assistant",
            "description": "General helper.",
            "provider": "anthropic",
            "model": "claude-assistant",
            "system": "You are the assistant.",
            "tools": ["calculator", "current_time"],
            "max_steps": 3,
            "max_tokens": 500,
        },
        {
            "name": "triage",
            "provider": "openai",
            "model": "qwen-triage",
            "system": "You sort tickets.",
            "tools": ["tracker__*"],
            "max_tokens": 64,
        },
    ],
}


@pytest.fixture
def openai_upstream() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def agents_settings(settings: Settings, openai_upstream: FakeLLMServer, agents: dict[str, Any] = AGENTS) -> Settings:
    raw = json.loads(json.dumps(agents))
    for agent in raw["agents"]:
        if agent["provider"] == "openai":
            agent["base_url"] = f"{openai_upstream.url}/v1"
    return settings.model_copy(update={"agents": parse_agents(json.dumps(raw)), "llm_provider": None})


def tracker_tools() -> list[Tool[Any]]:
    """Code-registered tools named like an MCP server's (`<server>__<tool>`) and one of another server."""
    from pydantic import BaseModel

    class NoInput(BaseModel):
        pass

    async def run(_: NoInput, __: Any) -> str:
        return "done"

    return [
        Tool(name=name, description=f"{name} tool", input_model=NoInput, run=run)
        for name in ("tracker__create_issue", "tracker__search", "mail__send")
    ]


@pytest.fixture
async def agents_app(
    settings: Settings, openai_upstream: FakeLLMServer
) -> AsyncIterator[tuple[Resources, httpx.AsyncClient]]:
    from app.main import create_app
    from tests.fixtures.app import lifespan_in_task

    app = create_app(agents_settings(settings, openai_upstream), extra_tools=tracker_tools())
    async with lifespan_in_task(app) as state:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            client.app = app  # type: ignore[attr-defined]  # for a test that drives it with another client
            yield state, client


def offered(body: dict[str, Any]) -> list[str]:
    tools = body.get("tools") or []
    return sorted(t["name"] if "name" in t else t["function"]["name"] for t in tools)


async def test_each_agent_reaches_its_upstream_with_its_model_prompt_and_tools(
    agents_app: tuple[Resources, httpx.AsyncClient], llm_server: FakeLLMServer, openai_upstream: FakeLLMServer
) -> None:
    state, client = agents_app
    auth = {"Authorization": f"Bearer {await make_key(state)}"}

    default = await client.post("/chat", json={"message": "hello"}, headers=auth)
    assert default.status_code == 200, default.text
    assert default.json()["agent"] == "assistant"
    assert default.json()["model"] == "claude-assistant"
    [sent] = llm_server.state.request_bodies()
    assert sent["model"] == "claude-assistant"
    assert "You are the assistant." in json.dumps(sent["system"])
    assert sent["max_tokens"] == 500
    assert offered(sent) == ["calculator", "current_time"]

    triage = await client.post("/chat", json={"message": "sort this", "agent": "triage"}, headers=auth)
    assert triage.status_code == 200, triage.text
    assert (triage.json()["agent"], triage.json()["model"]) == ("triage", "qwen-triage")
    [sent] = openai_upstream.state.request_bodies()
    assert sent["model"] == "qwen-triage"
    assert sent["messages"][0] == {"role": "system", "content": "You sort tickets."}
    assert sent.get("max_tokens", sent.get("max_completion_tokens")) == 64
    assert offered(sent) == ["tracker__create_issue", "tracker__search"]  # the pattern: one server's tools
    assert len(llm_server.state.request_bodies()) == 1  # nothing of triage's reached the other upstream


async def test_a_forged_call_of_a_tool_outside_the_list_is_an_error_result_never_run(
    agents_app: tuple[Resources, httpx.AsyncClient], llm_server: FakeLLMServer
) -> None:
    state, client = agents_app
    auth = {"Authorization": f"Bearer {await make_key(state)}"}
    r = await client.post("/chat", json={"message": "[[tool:mail__send {}]] go", "stream": True}, headers=auth)
    events = sse_events(r.text)
    [result] = [e["data"] for e in events if e["event"] == "tool_result"]
    assert result["is_error"] is True
    assert "no tool named 'mail__send'" in result["content"]
    assert events[-1]["event"] == "end"


async def test_a_conversation_sticks_to_its_agent(
    agents_app: tuple[Resources, httpx.AsyncClient], openai_upstream: FakeLLMServer
) -> None:
    state, client = agents_app
    auth = {"Authorization": f"Bearer {await make_key(state)}"}
    first = await client.post("/chat", json={"message": "one", "agent": "triage"}, headers=auth)
    cid = first.json()["conversation_id"]
    # Omitted: the conversation's own agent, not the default.
    second = await client.post("/chat", json={"message": "two", "conversation_id": cid}, headers=auth)
    assert second.status_code == 200, second.text
    assert second.json()["agent"] == "triage"
    assert len(openai_upstream.state.request_bodies()) == 2
    # Another agent named: 422, and nothing stored.
    other = await client.post(
        "/chat", json={"message": "x", "conversation_id": cid, "agent": "assistant"}, headers=auth
    )
    assert other.status_code == 422, other.text
    assert other.json()["error"]["type"] == "agent_mismatch"
    shown = await client.get(f"/conversations/{cid}", headers=auth)
    assert shown.json()["agent"] == "triage"
    messages = (await client.get(f"/conversations/{cid}/messages", headers=auth)).json()
    assert len(messages["items"] if isinstance(messages, dict) else messages) == 4
    # The SSE start event says which agent answers.
    streamed = await client.post("/chat", json={"message": "s", "conversation_id": cid, "stream": True}, headers=auth)
    assert sse_events(streamed.text)[0]["data"]["agent"] == "triage"


async def test_unknown_agents_and_keys_limited_to_some_agents(
    agents_app: tuple[Resources, httpx.AsyncClient],
) -> None:
    state, client = agents_app
    from app.auth.repository import ApiKeyRepository

    async with state.sessions() as session, session.begin():
        _, limited = await ApiKeyRepository(session).create("limited", agents=["triage"])
    auth = {"Authorization": f"Bearer {limited}"}
    listed = await client.get("/agents", headers=auth)
    assert [a["name"] for a in listed.json()["items"]] == ["triage"]
    assert listed.json()["items"][0]["tools"] == ["tracker__create_issue", "tracker__search"]
    for name in ("assistant", "nope"):
        r = await client.post("/chat", json={"message": "hi", "agent": name}, headers=auth)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["type"] == "agent_not_found"
    # Without naming one, a new conversation would be the default's, which this key may not use.
    assert (await client.post("/chat", json={"message": "hi"}, headers=auth)).status_code == 404
    assert (await client.post("/chat", json={"message": "hi", "agent": "triage"}, headers=auth)).status_code == 200
    everyone = {"Authorization": f"Bearer {await make_key(state)}"}
    names = [a["name"] for a in (await client.get("/agents", headers=everyone)).json()["items"]]
    assert names == ["assistant", "triage"]


async def test_v1_models_list_the_agents_and_model_selects_one(
    agents_app: tuple[Resources, httpx.AsyncClient], llm_server: FakeLLMServer, openai_upstream: FakeLLMServer
) -> None:
    state, client = agents_app
    key = await make_key(state)
    asgi = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=client.app))  # type: ignore[attr-defined]
    sdk = openai.AsyncOpenAI(api_key=key, base_url="http://test/v1", http_client=asgi, max_retries=0)
    ids = [m.id async for m in sdk.models.list()]
    assert {"assistant", "triage", "agentchat"} <= set(ids)
    answer = await sdk.chat.completions.create(model="triage", messages=[{"role": "user", "content": "hi"}])
    assert answer.model == "triage"
    assert openai_upstream.state.request_bodies()[-1]["model"] == "qwen-triage"
    old = await sdk.chat.completions.create(model="agentchat", messages=[{"role": "user", "content": "hi"}])
    assert old.choices[0].message.content
    assert llm_server.state.request_bodies()[-1]["model"] == "claude-assistant"  # agentchat: the default
    with pytest.raises(openai.NotFoundError):
        await sdk.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])


async def test_a_chat_ui_chat_follows_the_model_its_user_picks(
    agents_app: tuple[Resources, httpx.AsyncClient], llm_server: FakeLLMServer, openai_upstream: FakeLLMServer
) -> None:
    """Open WebUI: one chat id, the user switches models mid-chat: the chat (the client holds its
    history) goes on with the agent now named, instead of a 409; /chat still sticks to its agent."""
    state, client = agents_app
    key = await make_key(state)
    asgi = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=client.app))  # type: ignore[attr-defined]
    sdk = openai.AsyncOpenAI(api_key=key, base_url="http://test/v1", http_client=asgi, max_retries=0)
    chat = {"X-OpenWebUI-Chat-Id": "switching", "X-OpenWebUI-User-Id": "u1"}
    history: list[Any] = [{"role": "user", "content": "hi"}]
    first = await sdk.chat.completions.create(model="assistant", messages=history, extra_headers=chat)
    history += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "more"}]
    second = await sdk.chat.completions.create(model="triage", messages=history, extra_headers=chat)
    assert second.model == "triage"
    assert openai_upstream.state.request_bodies()[-1]["model"] == "qwen-triage"
    auth = {"Authorization": f"Bearer {key}"}
    [conversation] = (await client.get("/conversations", headers=auth)).json()["items"]
    assert conversation["agent"] == "triage"
    items = (await client.get(f"/conversations/{conversation['id']}/messages", headers=auth)).json()["items"]
    assert [i["model"] for i in items if i["role"] == "assistant"] == ["claude-assistant", "qwen-triage"]
    # POST /chat names the conversation itself: another agent there is still a mismatch.
    r = await client.post(
        "/chat", json={"message": "x", "conversation_id": conversation["id"], "agent": "assistant"}, headers=auth
    )
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "agent_mismatch"


async def test_a_v1_conversation_is_bound_by_its_first_response(
    agents_app: tuple[Resources, httpx.AsyncClient], openai_upstream: FakeLLMServer
) -> None:
    """POST /v1/conversations names no agent: the first response on it does; after an answer it sticks."""
    state, client = agents_app
    key = await make_key(state)
    asgi = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=client.app))  # type: ignore[attr-defined]
    sdk = openai.AsyncOpenAI(api_key=key, base_url="http://test/v1", http_client=asgi, max_retries=0)
    made = await sdk.conversations.create(items=[{"type": "message", "role": "user", "content": "context"}])
    answer = await sdk.responses.create(model="triage", conversation=made.id, input="hi")
    assert answer.model == "triage"
    assert openai_upstream.state.request_bodies()[-1]["model"] == "qwen-triage"
    with pytest.raises(openai.APIStatusError) as refused:
        await sdk.responses.create(model="assistant", conversation=made.id, input="again")
    assert refused.value.status_code == 400  # OpenAI's invalid request: bound to triage now
    assert len(openai_upstream.state.request_bodies()) == 1


async def test_a_conversation_whose_agent_was_removed_is_409_and_stays_readable(
    settings: Settings, openai_upstream: FakeLLMServer
) -> None:
    async with running_app(agents_settings(settings, openai_upstream)) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        cid = (await client.post("/chat", json={"message": "hi", "agent": "triage"}, headers=auth)).json()[
            "conversation_id"
        ]
        key = auth["Authorization"]
    only_assistant = {"default": "assistant", "agents": [AGENTS["agents"][0]]}
    async with running_app(agents_settings(settings, openai_upstream, only_assistant)) as (_, state, client):
        auth = {"Authorization": key}
        r = await client.post("/chat", json={"message": "again", "conversation_id": cid}, headers=auth)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["type"] == "agent_unavailable"
        assert (await client.get(f"/conversations/{cid}", headers=auth)).status_code == 200


def test_a_malformed_agents_setting_stops_start_up_with_one_line() -> None:
    bad = json.dumps({"agents": [{"name": "ok", "provider": "offline"}, {"name": "x", "provider": "nope"}]})
    done = subprocess.run(
        [sys.executable, "-c", "from app.core.config import load_settings; load_settings()"],
        env={"AGENTS": bad, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("agentchat: configuration error: AGENTS: agent 'x': provider:")


def test_agents_from_a_yaml_file_with_secrets_from_the_environment(tmp_path: Any, monkeypatch: Any) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        "default: b\nagents:\n  - name: a\n    provider: offline\n"
        "  - name: b\n    provider: openai\n    model: m\n    api_key: ${TEST_AGENT_KEY}\n"
    )
    monkeypatch.setenv("TEST_AGENT_KEY", "sk-secret-value")
    loaded = Settings(agents=str(path)).agent_set
    assert loaded.default_name == "b"
    secret = loaded.agents[1].api_key
    assert secret is not None
    assert secret.get_secret_value() == "sk-secret-value"
    assert "sk-secret-value" not in repr(loaded)
    monkeypatch.delenv("TEST_AGENT_KEY")
    with pytest.raises(ValueError, match=r"agent 'b': api_key references \$\{TEST_AGENT_KEY\}, which is not set"):
        Settings(agents=str(path))


async def test_agents_sharing_provider_url_and_key_share_one_client(
    settings: Settings, openai_upstream: FakeLLMServer
) -> None:
    three = json.loads(json.dumps(AGENTS))
    three["agents"].append({**three["agents"][0], "name": "second", "model": "claude-other"})
    async with running_app(agents_settings(settings, openai_upstream, three)) as (_, state, _client):
        by_name = {agent.name: agent for agent in state.agents.usable(None)}
        assert by_name["assistant"].llm is by_name["second"].llm
        assert by_name["assistant"].llm is not by_name["triage"].llm


async def test_the_cli_limits_a_key_to_some_agents(settings: Settings, openai_upstream: FakeLLMServer) -> None:
    configured = agents_settings(settings, openai_upstream)
    assert configured.agents is not None
    env = {**os.environ, "DATABASE_URL": settings.database_url, "AGENTS": configured.agents.model_dump_json()}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "app.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)

    refused = cli("create-key", "--name", "x", "--agents", "triage,nope")
    assert refused.returncode == 2
    assert "unknown agent(s) nope (known: assistant, triage)" in refused.stderr
    created = cli("create-key", "--name", "triager", "--agents", "triage")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert "triager  (triage)" in cli("list-keys").stdout
    async with running_app(configured) as (_, _state, client):
        listed = await client.get("/agents", headers={"Authorization": f"Bearer {key}"})
        assert [a["name"] for a in listed.json()["items"]] == ["triage"]


def test_the_shipped_example_is_valid_and_runs_offline() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "agents.example.yaml"
    loaded = Settings(agents=str(example)).agent_set
    assert loaded.default_name == "helper"
    assert [(a.name, a.provider) for a in loaded.agents] == [("helper", "offline"), ("calculator", "offline")]
