"""The OpenAI Agents SDK (`openai-agents`) against the live server: an agent with a function tool runs
the turns of tests/openai/real_clients.py, on the Responses API (its default) and on Chat Completions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from agents import (
    Agent,
    Model,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    RunConfig,
    Runner,
    function_tool,
)
from agents.items import TResponseInputItem
from agents.result import RunResultBase
from openai import AsyncOpenAI

from testkit.fake_llm import FakeLLMServer
from tests.helpers import Live
from tests.openai.conftest import sdk
from tests.openai.real_clients import (
    ANSWER,
    ASK,
    CHAINED,
    FIRST_TURN,
    RESENT,
    WEATHER_IN_PARIS,
    Sent,
    calls_for,
    recording,
    second_turn,
    weather,
)

# No traces: the SDK would send them to OpenAI's API.
CONFIG = RunConfig(tracing_disabled=True)
STREAMED = "Let me use get_weather." + ANSWER  # what a streaming client shows of the first run


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return weather(city)


@pytest.fixture
async def recorded(live: Live, live_key: str) -> AsyncIterator[tuple[Sent, AsyncOpenAI]]:
    """The `openai` client the Agents SDK's models use, and what it sends."""
    async with recording() as (sent, http), sdk(live, live_key, http_client=http) as client:
        yield sent, client


def agent_on(model: Model) -> Agent[Any]:
    return Agent(name="weather", model=model, tools=[get_weather])


async def run(
    agent: Agent[Any], stream: bool, given: str | list[TResponseInputItem], **options: Any
) -> tuple[RunResultBase, str | None]:
    """One run, and the text a streaming client showed as it came (None when not streamed)."""
    if not stream:
        return await Runner.run(agent, given, run_config=CONFIG, **options), None
    streamed = Runner.run_streamed(agent, given, run_config=CONFIG, **options)
    deltas = [
        event.data.delta
        async for event in streamed.stream_events()
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"
    ]
    return streamed, "".join(deltas)


def tool_outputs(result: RunResultBase) -> list[Any]:
    return [item.output for item in result.new_items if item.type == "tool_call_output_item"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_agents_sdk_on_responses(
    recorded: tuple[Sent, AsyncOpenAI], llm_server: FakeLLMServer, stream: bool
) -> None:
    """Its default: every item sent by the client, no previous_response_id, then chained on the last."""
    sent, client = recorded
    agent = agent_on(OpenAIResponsesModel("agentchat", client))
    first, shown = await run(agent, stream, ASK)
    assert first.final_output == ANSWER
    assert shown == (STREAMED if stream else None)
    assert tool_outputs(first) == [WEATHER_IN_PARIS]
    assert calls_for(llm_server, ASK)[-1] == FIRST_TURN
    assert first.last_response_id is not None

    chained, _ = await run(agent, stream, CHAINED, previous_response_id=first.last_response_id)
    assert chained.final_output == f"echo: {CHAINED}"
    resent, _ = await run(agent, stream, [*first.to_input_list(), {"role": "user", "content": RESENT}])
    assert resent.final_output == f"echo: {RESENT}"
    for text in (CHAINED, RESENT):
        assert calls_for(llm_server, text) == [second_turn(text)]
    assert llm_server.state.rejections == []
    whole_run = ["user", "message", "function_call", "function_call_output"]
    assert sent.items() == [
        (None, ["user"]),
        (None, whole_run),  # the run's second step: every item resent, nothing chained
        (first.last_response_id, ["user"]),
        (None, [*whole_run, "message", "user"]),
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_agents_sdk_chaining_each_step(
    recorded: tuple[Sent, AsyncOpenAI], llm_server: FakeLLMServer, stream: bool
) -> None:
    """auto_previous_response_id: each step of the run chained to the one before."""
    sent, client = recorded
    agent = agent_on(OpenAIResponsesModel("agentchat", client))
    first, shown = await run(agent, stream, ASK, auto_previous_response_id=True)
    assert first.final_output == ANSWER
    assert shown == (STREAMED if stream else None)
    assert calls_for(llm_server, ASK)[-1] == FIRST_TURN
    chained, _ = await run(agent, stream, CHAINED, previous_response_id=first.last_response_id)
    assert chained.final_output == f"echo: {CHAINED}"
    assert calls_for(llm_server, CHAINED) == [second_turn(CHAINED)]
    assert llm_server.state.rejections == []
    [first_step, _] = first.raw_responses
    assert sent.items() == [
        (None, ["user"]),
        (first_step.response_id, ["function_call_output"]),
        (first.last_response_id, ["user"]),
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_agents_sdk_on_chat_completions(
    recorded: tuple[Sent, AsyncOpenAI], llm_server: FakeLLMServer, stream: bool
) -> None:
    """Chat Completions has no response ids: the second turn resends the history."""
    sent, client = recorded
    agent = agent_on(OpenAIChatCompletionsModel("agentchat", client))
    first, shown = await run(agent, stream, ASK)
    assert first.final_output == ANSWER
    assert shown == (STREAMED if stream else None)
    assert tool_outputs(first) == [WEATHER_IN_PARIS]
    assert calls_for(llm_server, ASK)[-1] == FIRST_TURN
    resent, _ = await run(agent, stream, [*first.to_input_list(), {"role": "user", "content": RESENT}])
    assert resent.final_output == f"echo: {RESENT}"
    assert calls_for(llm_server, RESENT) == [second_turn(RESENT)]
    assert llm_server.state.rejections == []
    assert sent.items() == [
        (None, ["user"]),
        (None, ["user", "assistant", "tool"]),
        (None, ["user", "assistant", "tool", "assistant", "user"]),
    ]
