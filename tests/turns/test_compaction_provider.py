"""Long conversations on an agent whose provider compacts them (issue #27, `compaction: provider`):
the calls ask Anthropic's server-side context management (the fake model applies it as the API
documents), the compaction block goes back on the next call, the stream shows the `context` event,
its tokens are counted, and our own compactor never runs."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from app.core.agents_config import parse_agents
from app.core.config import ConfigError, Settings, load_settings
from app.llm.summary import PROVIDER_FIGURES, SUMMARY_ROLE
from app.models import Message, ModelUsage
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app
from tests.helpers import sse_events

FACT = "FACT: the user's cat is called Bruno-1729."
WINDOW = 80_000  # compacted past 0.75 of it: 60,000 tokens (the API's minimum trigger is 50,000)
WORDS = 20_000  # a turn's message, in the fake's tokens (words); ~10,000 of our estimated tokens


@pytest.fixture
def provider_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "agent_compaction": "provider",
            "agent_context_window": WINDOW,
            "history_token_budget": 400_000,
            "max_message_chars": 50_000,
            "turn_timeout": 30.0,
        }
    )


async def _rows(state: Resources, conversation_id: str) -> list[Message]:
    async with state.sessions() as session:
        query = select(Message).where(Message.conversation_id == uuid.UUID(conversation_id)).order_by(Message.id)
        return list((await session.execute(query)).scalars())


async def test_a_long_conversation_is_compacted_by_the_provider(
    provider_settings: Settings, llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(provider_settings) as (_, state, client):
        compactor = state.compactor
        assert compactor is not None
        ours: list[str] = []  # our own compactor never runs for this agent

        def schedule(job: Any) -> bool:
            ours.append("scheduled")
            return False

        monkeypatch.setattr(compactor, "schedule", schedule)

        async def compact(*args: Any, **kwargs: Any) -> None:
            ours.append("compacted")

        monkeypatch.setattr(compactor, "compact", compact)
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id: str | None = None
        streams: list[list[dict[str, Any]]] = []
        for n in range(1, 6):  # until a call passes the trigger
            text = f"{FACT if n == 1 else f'Message {n}.'} [[reply:noted {n}]]\n" + " ".join(["a"] * WORDS)
            body: dict[str, Any] = {"message": text, "stream": True}
            if conversation_id is not None:
                body["conversation_id"] = conversation_id
            r = await client.post("/chat", json=body, headers=auth)
            assert r.status_code == 200, r.text
            streams.append(sse_events(r.text))
            conversation_id = streams[-1][0]["data"]["conversation_id"]
            if "context" in [e["event"] for e in streams[-1]]:
                break
        assert conversation_id is not None
        calls = llm_server.state.request_bodies()
        assert len(calls) == len(streams) == 3  # 60,000 tokens are reached by the third message
        # Every call asks for the provider's context management, triggers from the agent's window.
        for call in calls:
            edits = call["context_management"]["edits"]
            assert [e["type"] for e in edits] == ["clear_tool_uses_20250919", "compact_20260112"]
            assert edits[0]["trigger"] == {"type": "input_tokens", "value": 48_000}
            assert edits[1]["trigger"] == {"type": "input_tokens", "value": 60_000}
        # Only the stream the provider compacted shows it, before its end.
        assert all("context" not in [e["event"] for e in events] for events in streams[:-1])
        kinds = [e["event"] for e in streams[-1]]
        assert kinds[-2:] == ["context", "end"]
        context, end = streams[-1][-2]["data"], streams[-1][-1]["data"]
        assert context["compacted"] is True
        assert context["messages_summarized"] == 5  # every message the call sent
        assert context["tokens_before"] >= 60_000
        assert 0 < context["tokens_after"] < context["tokens_before"]
        # The compaction's tokens are the turn's: in its usage, its row and GET /usage.
        assert end["usage"]["input_tokens"] > context["tokens_before"]
        rows = await _rows(state, conversation_id)
        answer = rows[-1]
        assert answer.role == "assistant"
        assert answer.input_tokens == end["usage"]["input_tokens"]
        assert answer.content[0]["type"] == "compaction"  # stored in the answer, with our figures
        assert "Bruno-1729" in answer.content[0]["content"]
        assert answer.content[0][PROVIDER_FIGURES]["tokens_before"] == context["tokens_before"]
        async with state.sessions() as session:
            spent = await session.scalar(
                select(func.sum(ModelUsage.input_tokens)).where(ModelUsage.message_id.in_([r.id for r in rows]))
            )
        usage = (await client.get("/usage", headers=auth)).json()["items"]
        assert sum(item["input_tokens"] for item in usage) == spent
        assert spent is not None
        assert spent > context["tokens_before"] + WORDS

        # The next call sends the compaction block back first; what it folded is not sent again.
        llm_server.reset()
        body = {"message": "[[reply:Bruno]] what is my cat called?", "conversation_id": conversation_id, "stream": True}
        r = await client.post("/chat", json=body, headers=auth)
        assert r.status_code == 200, r.text
        assert "context" not in [e["event"] for e in sse_events(r.text)]  # nothing new was compacted
        [call] = llm_server.state.request_bodies()
        opening = call["messages"][0]
        assert opening["role"] == "assistant"
        assert opening["content"][0]["type"] == "compaction"
        assert opening["content"][0]["content"] == answer.content[0]["content"]  # the fact, through the summary
        assert PROVIDER_FIGURES not in opening["content"][0]
        assert "a a a" not in json.dumps(call["messages"])
        assert llm_server.state.rejections == []

        # The history API: every message; the compacted answer says what its compaction folded.
        page = (await client.get(f"/conversations/{conversation_id}/messages", headers=auth)).json()
        assert [item["role"] for item in page["items"]] == ["user", "assistant"] * 4
        summaries = [item["summary"] for item in page["items"] if item["summary"] is not None]
        assert len(summaries) == 1
        assert summaries[0]["messages_summarized"] == 5
        assert summaries[0]["tokens_before"] == context["tokens_before"]
        assert page["items"][5]["content"] == "noted 3"  # the answer's text, not the summary
        assert not any(r.role == SUMMARY_ROLE for r in await _rows(state, conversation_id))
    assert ours == []


async def test_a_turn_that_calls_a_tool_after_the_compaction_sends_the_block_on(
    provider_settings: Settings, llm_server: FakeLLMServer
) -> None:
    async with running_app(provider_settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id: str | None = None
        events: list[dict[str, Any]] = []
        for n in range(1, 4):
            ask = '[[tool:calculator {"expression": "6*7"}]]' if n == 3 else "[[reply:ok]]"
            body: dict[str, Any] = {"message": f"{FACT} {ask}\n" + " ".join(["a"] * WORDS), "stream": True}
            if conversation_id is not None:
                body["conversation_id"] = conversation_id
            r = await client.post("/chat", json=body, headers=auth)
            assert r.status_code == 200, r.text
            events = sse_events(r.text)
            conversation_id = events[0]["data"]["conversation_id"]
        kinds = [e["event"] for e in events]
        assert kinds[-2:] == ["context", "end"]
        assert "tool_result" in kinds
        first, second = llm_server.state.request_bodies()[-2:]
        assert first["messages"][0]["role"] == "user"  # the call that compacted
        # The turn's next step sends the history from the compaction block on, not what it folded.
        assert second["messages"][0]["content"][0]["type"] == "compaction"
        assert PROVIDER_FIGURES not in second["messages"][0]["content"][0]
        assert "a a a" not in json.dumps(second["messages"])
        assert "42" in "".join(e["data"]["text"] for e in events if e["event"] == "delta")  # the tool's result
        assert llm_server.state.rejections == []
        assert conversation_id is not None
        answer = (await _rows(state, conversation_id))[-1]
        assert [b["type"] for b in answer.content][:1] == ["compaction"]
        assert "tool_result" in [b["type"] for b in answer.content]


def test_provider_compaction_on_another_provider_stops_start_up(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    agents = [{"name": "local", "provider": "openai", "model": "qwen3-8b", "compaction": "provider"}]
    with pytest.raises(ValueError, match="agent 'local': compaction: provider needs provider anthropic"):
        parse_agents(agents)
    assert parse_agents([{**agents[0], "provider": "anthropic"}]) is not None
    monkeypatch.setenv("AGENTS", json.dumps(agents))
    with pytest.raises(ConfigError) as stopped:
        load_settings()
    assert stopped.value.code == 2
    assert "AGENTS: agent 'local': compaction: provider needs provider anthropic" in capsys.readouterr().err
    monkeypatch.delenv("AGENTS")
    monkeypatch.setenv("LLM_PROVIDER", "offline")
    monkeypatch.setenv("AGENT_COMPACTION", "provider")
    with pytest.raises(ConfigError) as stopped:
        load_settings()
    assert stopped.value.code == 2
    assert "AGENT_COMPACTION=provider needs the anthropic provider" in capsys.readouterr().err


def test_provider_compaction_that_could_never_trigger_stops_start_up(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider compacts past 50,000 input tokens at the least: a window, or a HISTORY_TOKEN_BUDGET
    that keeps every history smaller, would mean it never does (turns dropped instead)."""
    small = [{"name": "small", "provider": "anthropic", "model": "claude-x", "compaction": "provider"}]
    with pytest.raises(ValueError, match="agent 'small': compaction: provider needs a context_window of at least"):
        parse_agents([{**small[0], "context_window": 32_000}])
    monkeypatch.setenv("AGENTS", json.dumps(small))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    monkeypatch.setenv("HISTORY_TOKEN_BUDGET", "20000")
    with pytest.raises(ConfigError) as stopped:
        load_settings()
    assert stopped.value.code == 2
    assert "needs HISTORY_TOKEN_BUDGET of at least 50,000" in capsys.readouterr().err
    monkeypatch.setenv("HISTORY_TOKEN_BUDGET", "60000")
    assert load_settings().history_token_budget == 60_000
