"""Long conversations (issue #27): compaction keeps what matters, keeps every call within the
agent's window, and keeps the prompt prefix byte-identical between compactions."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.core.config import Settings
from app.llm.anthropic import mark_cache_prefix
from app.llm.summary import COMPACTION, SUMMARY_OPEN, SUMMARY_ROLE, summary_text
from app.models import Conversation, Message, ModelUsage
from app.state import Resources
from app.turns.compaction import KEEP_TURNS, SUMMARY_PROMPT, Job, known_window, plan, view_of
from testkit.fake_llm import FakeLLMServer
from testkit.fake_llm.summarizer import SUMMARY_PROMPT_START
from tests.fixtures.app import make_key, running_app
from tests.helpers import sse_events

WINDOW = 12_000
FACT = "FACT: the user's cat is called Bruno-1729."


def _id(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def _row(n: int, role: str, text: str) -> tuple[uuid.UUID, str, list[dict[str, Any]]]:
    return _id(n), role, [{"type": "text", "text": text}]


def test_known_windows() -> None:
    assert known_window("claude-sonnet-4-5") == 200_000
    assert known_window("openai/gpt-4o-mini") == 128_000
    assert known_window("gpt-4.1-mini") == 1_047_576
    assert known_window("something-else") == 128_000


def test_the_fake_knows_the_summary_prompt() -> None:
    assert SUMMARY_PROMPT.startswith(SUMMARY_PROMPT_START)


def test_a_view_folds_what_the_summary_covers_and_stubs_old_tool_results() -> None:
    call = {"type": "tool_use", "id": "toolu_1", "name": "recall", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x" * 500}
    rows = [
        _row(1, "user", "one"),
        _row(2, "assistant", "echo one"),
        _row(3, "user", "two"),
        (_id(4), "assistant", [call, result, {"type": "text", "text": "done"}]),
        _row(5, "user", "three"),
        _row(6, "assistant", "echo three"),
        (
            _id(7),
            SUMMARY_ROLE,
            [{"type": COMPACTION, "text": "S", "covers": [str(_id(1)), str(_id(2))], "cleared_before": str(_id(5))}],
        ),
    ]
    view = view_of(rows)
    messages = view.messages()
    assert messages[0] == ("user", [{"type": "text", "text": summary_text("S")}])
    assert [role for role, _ in messages[1:]] == ["user", "assistant", "user", "assistant"]
    stub = messages[2][1][1]
    assert stub == {"type": "tool_result", "tool_use_id": "toolu_1", "content": "[tool result cleared: 500 chars]"}
    assert messages[2][1][0] == call  # the call and its id stay
    assert messages[3][1] == [{"type": "text", "text": "three"}]  # after cleared_before: verbatim


def test_a_plan_clears_tool_results_first_then_summarizes_the_oldest_turns() -> None:
    big = "y" * 4000
    call = {"type": "tool_use", "id": "toolu_1", "name": "recall", "input": {}}
    rows: list[tuple[uuid.UUID, str, Any]] = []
    for turn in range(6):
        rows.append(_row(10 * turn, "user", f"question {turn}"))
        result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": big}
        rows.append((_id(10 * turn + 1), "assistant", [call, result, {"type": "text", "text": "ok"}]))
    assert plan(rows, 100_000) is None  # under the threshold: nothing to do
    assert plan(rows, 100_000, reported=120_000) is not None  # the provider's count is the truth
    edit = plan(rows, 6_000)
    assert edit is not None
    assert not edit.summarizes  # clearing the old results is enough
    assert edit.cleared_before == str(_id(10 * (6 - KEEP_TURNS)))
    chat = [_row(n, "user" if n % 2 == 0 else "assistant", "z" * 2000) for n in range(40)]
    summary = plan(chat, 8_000)
    assert summary is not None
    assert summary.summarizes
    assert summary.covers == (str(_id(0)), str(summary.summarize[-1][0]))
    assert len(summary.summarize) < len(chat) - 2 * KEEP_TURNS + 1


def test_the_cache_breakpoint_follows_the_summary() -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": summary_text("S")}, {"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "more"}]},
    ]
    marked = mark_cache_prefix(messages)
    assert marked[0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in marked[0]["content"][1]
    assert marked[1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "cache_control" not in messages[0]["content"][0]  # the caller's list is not changed


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _is_summary(body: dict[str, Any]) -> bool:
    system = body.get("system") or []
    return bool(system) and str(system[0].get("text", "")).startswith(SUMMARY_PROMPT_START)


def _tokens(body: dict[str, Any]) -> int:
    return sum(max(1, len(repr(_strip(m["content"]))) // 4) for m in body["messages"])


async def _rows(state: Resources, conversation_id: str) -> list[Message]:
    async with state.sessions() as session:
        query = select(Message).where(Message.conversation_id == uuid.UUID(conversation_id)).order_by(Message.id)
        return list((await session.execute(query)).scalars())


@pytest.fixture
def long_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"agent_context_window": WINDOW, "turn_timeout": 30.0})


async def _converse(
    client: httpx.AsyncClient, state: Resources, auth: dict[str, str], turns: int, first: str
) -> tuple[str, list[dict[str, Any]]]:
    """`turns` turns of ~1,200 characters each; after each, any compaction it started has finished."""
    assert state.compactor is not None
    conversation_id: str | None = None
    for n in range(1, turns + 1):
        filler = " ".join(f"turn{n}-word{i}" for i in range(100))
        text = f"{first}\n{filler}" if n == 1 else f"Message {n}: {filler}"
        body: dict[str, Any] = {"message": text}
        if conversation_id is not None:
            body["conversation_id"] = conversation_id
        r = await client.post("/chat", json=body, headers=auth)
        assert r.status_code == 200, r.text
        conversation_id = r.json()["conversation_id"]
        await state.compactor.idle()
    assert conversation_id is not None
    return conversation_id, []


async def test_a_300_turn_conversation_stays_within_the_window_and_remembers_turn_1(
    long_settings: Settings, llm_server: FakeLLMServer
) -> None:
    async with running_app(long_settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id, _ = await _converse(client, state, auth, 300, FACT)
        bodies = llm_server.state.request_bodies()
        calls = [b for b in bodies if not _is_summary(b)]
        summaries = [b for b in bodies if _is_summary(b)]
        assert len(calls) == 300
        # No model call over what fits the window (the answer's max_tokens reserved).
        fits = WINDOW - long_settings.llm_max_tokens
        assert max(_tokens(b) for b in calls) <= fits
        # The fact from turn 1 reaches the model at turn 300, through the summary.
        first = calls[-1]["messages"][0]["content"][0]
        assert first["text"].startswith(SUMMARY_OPEN)
        assert "Bruno-1729" in first["text"]
        assert first["cache_control"] == {"type": "ephemeral"}  # the breakpoint after the summary
        assert not any("turn1-word" in json.dumps(m) for m in calls[-1]["messages"])  # turn 1 itself is not sent
        # Between compactions the prefix is byte-identical: each call starts with the previous
        # call's whole history (cache marks aside, which move with the end of the history).
        rows = await _rows(state, conversation_id)
        compactions = [r for r in rows if r.role == SUMMARY_ROLE]
        assert 5 <= len(compactions) <= len(summaries) + 5
        assert all(not r.content[0]["fallback"] for r in compactions)
        same = sum(
            1
            for before, after in zip(calls, calls[1:], strict=False)
            if _strip(after["messages"][: len(before["messages"])]) == _strip(before["messages"])
            and _strip(after.get("system")) == _strip(before.get("system"))
        )
        assert same == len(calls) - 1 - len(compactions)
        # The summarizer's tokens are recorded on its rows (they count against the key's quota too).
        assert all(r.input_tokens > 0 and r.output_tokens > 0 for r in compactions if r.content[0]["text"])
        async with state.sessions() as session:
            query = select(ModelUsage).where(ModelUsage.message_id.in_([r.id for r in compactions]))
            spent = list((await session.execute(query)).scalars())
        assert len(spent) == len(summaries)  # each summarizer call is in GET /usage
        assert sum(u.input_tokens for u in spent) == sum(r.input_tokens for r in compactions)
        # The history API: every original message, and the summaries as items of their own.
        page = (await client.get(f"/conversations/{conversation_id}/messages", headers=auth)).json()
        roles = [item["role"] for item in page["items"]]
        assert roles.count("user") == 300
        assert roles.count("assistant") == 300
        assert roles.count("summary") == len(compactions)
        last = [item for item in page["items"] if item["role"] == "summary"][-1]
        assert "Bruno-1729" in last["content"]
        assert last["summary"]["covers_from"] == str(rows[0].id)
        assert last["summary"]["messages_summarized"] > 0
        assert last["summary"]["tokens_after"] < last["summary"]["tokens_before"]
        assert last["usage"]["input_tokens"] > 0


async def test_a_failing_summarizer_falls_back_to_dropping_the_oldest_turns(
    long_settings: Settings, llm_server: FakeLLMServer
) -> None:
    async with running_app(long_settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id, _ = await _converse(client, state, auth, 30, "[[summary_fail]] " + FACT)
        rows = await _rows(state, conversation_id)
        compactions = [r.content[0] for r in rows if r.role == SUMMARY_ROLE]
        assert compactions
        assert compactions[0]["fallback"] is True
        assert compactions[0]["text"] is None
        assert all(c["fallback"] is False for c in compactions[1:])  # later ones summarize again
        calls = [b for b in llm_server.state.request_bodies() if not _is_summary(b)]
        assert len(calls) == 30  # every turn was answered
        assert max(_tokens(b) for b in calls) <= WINDOW - long_settings.llm_max_tokens
        assert "summary_fail" not in json.dumps(calls[-1]["messages"])  # the first turns were dropped


async def test_compaction_off_keeps_the_old_behaviour(settings: Settings, llm_server: FakeLLMServer) -> None:
    off = settings.model_copy(update={"agent_context_window": WINDOW, "agent_compaction": "off"})
    async with running_app(off) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id, _ = await _converse(client, state, auth, 12, FACT)
        rows = await _rows(state, conversation_id)
        assert not any(r.role == SUMMARY_ROLE for r in rows)
        assert not any(_is_summary(b) for b in llm_server.state.request_bodies())


async def _stream(client: httpx.AsyncClient, auth: dict[str, str], conversation_id: str, text: str) -> list[Any]:
    body = {"message": text, "conversation_id": conversation_id, "stream": True}
    r = await client.post("/chat", json=body, headers=auth)
    assert r.status_code == 200, r.text
    return sse_events(r.text)


async def test_the_stream_of_the_first_turn_after_a_compaction_shows_a_context_event(
    long_settings: Settings, llm_server: FakeLLMServer
) -> None:
    async with running_app(long_settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        assert state.compactor is not None
        conversation_id, _ = await _converse(client, state, auth, 1, FACT)
        for n in range(30):  # until a turn's recording starts a compaction
            r = await client.post(
                "/chat",
                json={"message": f"Message {n}: " + "x " * 600, "conversation_id": conversation_id},
                headers=auth,
            )
            assert r.status_code == 200, r.text
            await state.compactor.idle()
            if (await _rows(state, conversation_id))[-1].role == SUMMARY_ROLE:
                break
        events = await _stream(client, auth, conversation_id, "what is my cat called?")
        kinds = [e["event"] for e in events]
        assert kinds[:2] == ["start", "context"]
        assert kinds[-1] == "end"
        context = events[1]["data"]
        assert context["compacted"] is True
        assert context["messages_summarized"] > 0
        assert context["tokens_after"] < context["tokens_before"]
        # Only the first turn that sends the new summary says so.
        again = await _stream(client, auth, conversation_id, "and again?")
        assert "context" not in [e["event"] for e in again]


async def test_a_history_that_does_not_fit_is_compacted_before_the_model_call(
    long_settings: Settings, llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(long_settings) as (_, state, client):
        compactor = state.compactor
        assert compactor is not None
        # As if no background compaction had run yet (another replica's lagging, say).
        monkeypatch.setattr(compactor, "schedule", lambda job: False)
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id, _ = await _converse(client, state, auth, 16, FACT)
        assert not any(r.role == SUMMARY_ROLE for r in await _rows(state, conversation_id))
        fits = WINDOW - long_settings.llm_max_tokens
        llm_server.reset()
        events: list[Any] = []
        for n in range(10):  # until the history no longer fits
            events = await _stream(client, auth, conversation_id, f"Later {n}: " + "filler " * 150)
            if "context" in [e["event"] for e in events]:
                break
        kinds = [e["event"] for e in events]
        assert kinds[:2] == ["start", "context"]
        assert kinds[-1] == "end"
        assert events[1]["data"]["messages_summarized"] > 0
        rows = await _rows(state, conversation_id)
        assert sum(1 for r in rows if r.role == SUMMARY_ROLE) == 1
        call = [b for b in llm_server.state.request_bodies() if not _is_summary(b)][-1]
        assert "Bruno-1729" in call["messages"][0]["content"][0]["text"]  # the summary, not dropped turns
        assert _tokens(call) <= fits
        assert "filler" in json.dumps(call["messages"][-1])  # the turn's own message, verbatim


async def test_a_paused_turn_continues_with_the_compacted_history(
    long_settings: Settings, llm_server: FakeLLMServer
) -> None:
    gated = long_settings.model_copy(update={"agent_approval_tools": "calc*"})
    async with running_app(gated) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id, _ = await _converse(client, state, auth, 20, FACT)
        assert any(r.role == SUMMARY_ROLE for r in await _rows(state, conversation_id))
        body = {"message": '[[tool:calculator {"expression": "2+2"}]] compute', "conversation_id": conversation_id}
        paused = (await client.post("/chat", json=body, headers=auth)).json()
        assert paused["stop_reason"] == "awaiting_approval"
        [pending] = paused["pending_approvals"]
        decision = {"decisions": [{"tool_use_id": pending["tool_use_id"], "approve": True}]}
        done = await client.post(f"/conversations/{conversation_id}/approvals", json=decision, headers=auth)
        assert done.status_code == 200, done.text
        assert done.json()["message"]["status"] == "complete"
        call = [b for b in llm_server.state.request_bodies() if not _is_summary(b)][-1]
        assert call["messages"][0]["content"][0]["text"].startswith(SUMMARY_OPEN)  # folded, as phase 1 reads it
        assert "Bruno-1729" in call["messages"][0]["content"][0]["text"]
        assert _tokens(call) <= WINDOW - long_settings.llm_max_tokens


async def test_one_compaction_per_conversation_at_a_time_across_replicas(
    long_settings: Settings, llm_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running_app(long_settings) as (_, state, client):
        compactor = state.compactor
        assert compactor is not None
        monkeypatch.setattr(compactor, "schedule", lambda job: False)  # this test compacts by hand
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id, _ = await _converse(client, state, auth, 16, FACT)
        owner = (await _rows(state, conversation_id))[0]
        async with state.sessions() as session:
            owner_id = await session.scalar(
                select(Conversation.owner_id).where(Conversation.id == owner.conversation_id)
            )
        assert owner_id is not None
        job = Job(uuid.UUID(conversation_id), owner_id, "agentchat", None)
        held = await state.locks.acquire(f"compaction:{conversation_id}")  # another replica compacts it
        assert held is not None
        assert await compactor.compact(job) is None
        assert not any(r.role == SUMMARY_ROLE for r in await _rows(state, conversation_id))
        await state.locks.release(held)
        done = await compactor.compact(job)
        assert done is not None
        assert done[0].messages_summarized > 0
        assert await compactor.compact(job) is None  # compacted: nothing left to do
        assert sum(1 for r in await _rows(state, conversation_id) if r.role == SUMMARY_ROLE) == 1


async def test_a_compaction_stays_on_its_branch(long_settings: Settings, llm_server: FakeLLMServer) -> None:
    """A summary hangs below the last message it acts on: a regenerated last answer right after the
    compaction its turn started still reads it; an edit of turn 2 (a branch that leaves before it)
    reads turns 1-2's own messages instead."""
    async with running_app(long_settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        conversation_id, _ = await _converse(client, state, auth, 20, FACT)
        for n in range(21, 60):  # on until a turn starts a compaction (its answer the last message)
            count = len([r for r in await _rows(state, conversation_id) if r.role == SUMMARY_ROLE])
            body = {"message": f"Message {n}: " + " ".join(f"turn{n}-word{i}" for i in range(100))}
            r = await client.post("/chat", json={**body, "conversation_id": conversation_id}, headers=auth)
            assert r.status_code == 200, r.text
            assert state.compactor is not None
            await state.compactor.idle()
            rows = await _rows(state, conversation_id)
            if len([r for r in rows if r.role == SUMMARY_ROLE]) > count:
                break
        summaries = [r for r in rows if r.role == SUMMARY_ROLE]
        assert summaries, "turns of ~1,200 characters compact a 12k window"
        assert all(s.parent_id is not None and s.parent_id < s.id for s in summaries)
        answers = [r for r in rows if r.role == "assistant"]

        r = await client.post(f"/conversations/{conversation_id}/messages/{answers[-1].id}/regenerate", headers=auth)
        assert r.status_code == 200, r.text
        calls = [b for b in llm_server.state.request_bodies() if not _is_summary(b)]
        first = calls[-1]["messages"][0]["content"][0]["text"]
        assert first == summary_text(summaries[-1].content[0]["text"])  # the latest summary, still
        # It hangs below the last message it acts on, before the turns it keeps: an edit of the
        # last message reads it too.
        assert summaries[-1].parent_id in {r.id for r in rows[:-2]}

        edit = {
            "message": "turn 2, edited",
            "conversation_id": conversation_id,
            "parent_message_id": str(answers[0].id),
        }
        r = await client.post("/chat", json=edit, headers=auth)
        assert r.status_code == 200, r.text
        sent = [b for b in llm_server.state.request_bodies() if not _is_summary(b)][-1]["messages"]
        assert len(sent) == 3  # turn 1's message and answer, then the edit: no summary, no later turn
        assert "turn1-word0" in json.dumps(sent[0])
        assert sent[-1]["content"][0]["text"] == "turn 2, edited"
        page = (await client.get(f"/conversations/{conversation_id}/messages", headers=auth)).json()
        assert [i["role"] for i in page["items"]] == ["user", "assistant", "user", "assistant"]
        assert llm_server.state.rejections == []
