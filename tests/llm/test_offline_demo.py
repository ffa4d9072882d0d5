"""The offline demo agent: labelled, streamed word by word, and calling the built-in tools it is offered."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.agent.registry import builtin_tools
from app.core.config import Settings
from app.llm.base import Completed, LLMEvent, LLMRequest, TextDelta, ToolCall
from app.llm.offline import MARK, OFFLINE_NOTICE, OfflineModel
from app.models import Memory
from app.state import Resources
from tests.fixtures.app import make_key, running_app
from tests.helpers import sse_events

TOOLS = builtin_tools()
OFFERED = [TOOLS[name].schema() for name in ("remember", "recall", "calculator", "current_time")]
TOOL_ID = re.compile(r"^toolu_offline_[0-9a-f]{16}$")


async def events_for(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> list[LLMEvent]:
    request = LLMRequest(model="offline", messages=messages, max_tokens=1024, tools=OFFERED if tools is None else tools)
    async with OfflineModel(word_delay=0).stream(request) as events:
        return [event async for event in events]


def ask(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def split(events: list[LLMEvent]) -> tuple[str, list[ToolCall], Completed]:
    """The streamed text, the tool calls, and the final event; checks the order real providers keep."""
    *body, completed = events
    assert isinstance(completed, Completed)
    assert not any(isinstance(e, Completed) for e in body)
    kinds = ["text" if isinstance(e, TextDelta) else "tool" for e in body]
    assert kinds == sorted(kinds, key=lambda k: k == "tool"), "text deltas come before tool calls"
    text = "".join(e.text for e in body if isinstance(e, TextDelta))
    return text, [e for e in body if isinstance(e, ToolCall)], completed


# ------------------------------------------------------------------------------------------ unit


@pytest.mark.parametrize(
    ("message", "tool", "tool_input"),
    [
        ("what is 12*(3+4)?", "calculator", {"expression": "12*(3+4)"}),
        ("compute 2**10", "calculator", {"expression": "2**10"}),
        ("6 * 7", "calculator", {"expression": "6 * 7"}),
        (
            "Remember that my favourite colour is teal.",
            "remember",
            {"fact": "The user said: my favourite colour is teal"},
        ),
        ("what do you remember?", "recall", {"query": "user"}),
        ("What do you remember about my cat?", "recall", {"query": "cat"}),
        ("recall my favourite colour", "recall", {"query": "favourite colour"}),
        ("what time is it?", "current_time", {"timezone": "UTC"}),
        ("time in Tokyo", "current_time", {"timezone": "Asia/Tokyo"}),
        ("What time is it in New York right now?", "current_time", {"timezone": "America/New_York"}),
    ],
)
async def test_a_message_asking_for_a_tool_calls_it(message: str, tool: str, tool_input: dict[str, Any]) -> None:
    text, calls, completed = split(await events_for(ask(message)))
    assert completed.stop_reason == "tool_use"
    assert [(c.name, c.input) for c in calls] == [(tool, tool_input)]
    TOOLS[tool].input_model.model_validate(calls[0].input)  # the field names the real tool expects
    assert TOOL_ID.fullmatch(calls[0].id)
    assert text.startswith(MARK)
    assert completed.content == [
        {"type": "text", "text": text},
        {"type": "tool_use", "id": calls[0].id, "name": tool, "input": tool_input},
    ]
    assert completed.usage.input_tokens == len(message.split())
    assert completed.usage.output_tokens > len(text.split())


@pytest.mark.parametrize(
    ("call", "result", "answer"),
    [
        (("calculator", {"expression": "12*(3+4)"}), {"content": "84"}, "The calculator says 84."),
        (("remember", {"fact": "x"}), {"content": "Remembered."}, "I'll remember that."),
        (
            ("recall", {"query": "user"}),
            {"content": "- The user said: my cat is called Miso"},
            "Here is what I remember:\n- The user said: my cat is called Miso",
        ),
        (
            ("recall", {"query": "dog"}),
            {"content": "Nothing remembered matches that."},
            "I don't remember anything about that yet. Tell me something with: remember that …",
        ),
        (
            ("current_time", {"timezone": "Asia/Tokyo"}),
            {"content": "2025-01-01T09:03:00+09:00 (Wednesday, Asia/Tokyo)"},
            "It is 09:03 on Wednesday, 1 January 2025 in Asia/Tokyo.",
        ),
        (
            ("calculator", {"expression": "1/0"}),
            {"content": "Division by zero.", "is_error": True},
            "The calculator could not answer: Division by zero.",
        ),
    ],
)
async def test_the_next_step_answers_from_the_tool_result(
    call: tuple[str, dict[str, Any]], result: dict[str, Any], answer: str
) -> None:
    name, tool_input = call
    messages = [
        *ask("whatever started it"),
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": f"{MARK} Let me use it."},
                {"type": "tool_use", "id": "toolu_offline_0123456789abcdef", "name": name, "input": tool_input},
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_offline_0123456789abcdef", **result}],
        },
    ]
    text, calls, completed = split(await events_for(messages))
    assert calls == []
    assert completed.stop_reason == "end_turn"
    assert text == answer
    assert completed.content == [{"type": "text", "text": answer}]
    assert completed.usage.output_tokens == len(answer.split(" "))


async def test_a_new_question_after_an_interrupted_call_is_answered_as_a_question() -> None:
    # History repair merges the closed call's result and the next message into one user message.
    messages = [
        *ask("what is 1+1?"),
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "calculator", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "interrupted", "is_error": True},
                {"type": "text", "text": "what is 6*7?"},
            ],
        },
    ]
    _, calls, completed = split(await events_for(messages))
    assert [(c.name, c.input) for c in calls] == [("calculator", {"expression": "6*7"})]
    assert completed.stop_reason == "tool_use"


async def test_a_tool_not_on_offer_is_named_instead_of_called() -> None:
    only_memory = [TOOLS["remember"].schema(), TOOLS["recall"].schema()]
    text, calls, completed = split(await events_for(ask("what is 6*7?"), tools=only_memory))
    assert calls == []
    assert completed.stop_reason == "end_turn"
    assert text.startswith(MARK)
    assert "calculator tool" in text
    assert "AGENT_TOOLS" in text
    assert "remember, recall" in text


async def test_without_a_tool_intent_it_echoes_and_explains() -> None:
    text, calls, completed = split(await events_for(ask("hi there, what is the meaning of life?")))
    assert calls == []
    assert completed.stop_reason == "end_turn"
    assert text.startswith(OFFLINE_NOTICE)
    assert "hi there, what is the meaning of life?" in text
    assert "ANTHROPIC_API_KEY" in text
    assert "try: what is 12*7?" in text
    assert completed.usage.output_tokens == len(text.split(" "))


async def test_answers_are_deterministic_apart_from_tool_ids() -> None:
    first, second = [split(await events_for(ask("what is 12*(3+4)?"))) for _ in range(2)]
    assert first[0] == second[0]
    assert [(c.name, c.input) for c in first[1]] == [(c.name, c.input) for c in second[1]]
    assert first[1][0].id != second[1][0].id
    assert first[2].usage == second[2].usage


async def test_it_streams_small_deltas_and_yields_to_the_loop_between_them() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        deltas = [e for e in await events_for(ask("hello")) if isinstance(e, TextDelta)]
    finally:
        task.cancel()
    assert len(deltas) > 20
    assert all(len(d.text.split()) == 1 for d in deltas)
    # Without a checkpoint between words, the other task would not have run at all.
    assert ticks >= len(deltas) - 1


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture
def offline_settings(settings: Settings) -> Settings:
    offline = settings.model_copy(update={"llm_provider": "offline", "anthropic_api_key": None})
    assert offline.provider == "offline"
    return offline


@pytest.fixture
async def offline_app(offline_settings: Settings) -> AsyncIterator[tuple[Resources, httpx.AsyncClient]]:
    async with running_app(offline_settings) as (_, state, client):
        yield state, client


async def chat(client: httpx.AsyncClient, key: str, message: str, **extra: Any) -> httpx.Response:
    r = await client.post("/chat", json={"message": message, **extra}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r


async def test_a_streamed_turn_calls_the_calculator_and_answers(
    offline_app: tuple[Resources, httpx.AsyncClient],
) -> None:
    state, client = offline_app
    r = await chat(client, await make_key(state), "what is 6*7?", stream=True)
    events = sse_events(r.text)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    use, result = kinds.index("tool_use"), kinds.index("tool_result")
    assert 0 < use < result
    assert set(kinds[1:use]) == {"delta"}
    assert events[use]["data"]["name"] == "calculator"
    assert events[use]["data"]["input"] == {"expression": "6*7"}
    assert events[result]["data"] == {"tool_use_id": events[use]["data"]["id"], "content": "42", "is_error": False}
    after = [e["data"]["text"] for e in events[result + 1 : -1] if e["event"] == "delta"]
    assert "42" in "".join(after)
    assert events[-1]["data"]["stop_reason"] == "end_turn"


async def test_a_json_turn_lists_the_tool_call(offline_app: tuple[Resources, httpx.AsyncClient]) -> None:
    state, client = offline_app
    body = (await chat(client, await make_key(state), "what is 6*7?")).json()
    assert body["stop_reason"] == "end_turn"
    (call,) = body["message"]["tool_calls"]
    assert call == {
        "id": call["id"],
        "name": "calculator",
        "input": {"expression": "6*7"},
        "result": "42",
        "is_error": False,
    }
    assert TOOL_ID.fullmatch(call["id"])
    assert body["message"]["content"] == f"{MARK} Let me use the calculator.\n\nThe calculator says 42."


async def test_memories_carry_across_conversations_of_one_key(offline_app: tuple[Resources, httpx.AsyncClient]) -> None:
    state, client = offline_app
    key, other_key = await make_key(state, "me"), await make_key(state, "someone else")
    first = (await chat(client, key, "remember that my cat is called Miso")).json()
    assert [(c["name"], c["result"]) for c in first["message"]["tool_calls"]] == [("remember", "Remembered.")]
    assert first["message"]["content"].endswith("I'll remember that.")
    async with state.sessions() as session:
        stored = (await session.execute(select(Memory.content))).scalars().all()
    assert stored == ["The user said: my cat is called Miso"]

    second = (await chat(client, key, "what do you remember?")).json()  # no conversation_id: a new one
    assert second["conversation_id"] != first["conversation_id"]
    assert [c["name"] for c in second["message"]["tool_calls"]] == ["recall"]
    assert "Here is what I remember:" in second["message"]["content"]
    assert "Miso" in second["message"]["content"]

    stranger = (await chat(client, other_key, "what do you remember?")).json()
    assert "Miso" not in stranger["message"]["content"]
    assert "don't remember anything" in stranger["message"]["content"]
