"""LangChain's ChatOpenAI (`langchain-openai`) against the live server: a tool-calling loop as its docs
write it runs the turns of tests/openai/real_clients.py, on Chat Completions and on the Responses API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from testkit.fake_llm import FakeLLMServer
from tests.helpers import Live
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


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return weather(city)


def chat_model(live: Live, key: str, http: httpx2.AsyncClient, **options: Any) -> ChatOpenAI:
    return ChatOpenAI(
        model="agentchat",
        base_url=f"{live.url}/v1",
        api_key=key,
        max_retries=0,
        http_async_client=http,
        **options,
    )


async def ask(model: Runnable[LanguageModelInput, BaseMessage], messages: list[BaseMessage], stream: bool) -> AIMessage:
    """One model call; streamed, the chunks added up as LangChain's docs do."""
    if not stream:
        answer = await model.ainvoke(messages)
        assert isinstance(answer, AIMessage)
        return answer
    total: AIMessageChunk | None = None
    async for chunk in model.astream(messages):
        assert isinstance(chunk, AIMessageChunk)
        total = chunk if total is None else total + chunk
    assert total is not None
    return total


async def tool_loop(model: Runnable[LanguageModelInput, BaseMessage], messages: list[BaseMessage], stream: bool) -> int:
    """Call the model, run the tools it asks for, until it answers; the messages grow in place."""
    for steps in range(1, 5):
        answer = await ask(model, messages, stream)
        messages.append(answer)
        if not answer.tool_calls:
            return steps
        messages += [await get_weather.ainvoke(call) for call in answer.tool_calls]
    raise AssertionError(f"no answer after {steps} steps: {messages}")


@pytest.fixture
async def recorded() -> AsyncIterator[tuple[Sent, httpx2.AsyncClient]]:
    """The HTTP client ChatOpenAI's `openai` client uses, and what it sends."""
    async with recording() as (sent, http):
        yield sent, http


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("responses", [False, True], ids=["chat", "responses"])
async def test_langchain_chat_openai(
    live: Live,
    live_key: str,
    llm_server: FakeLLMServer,
    recorded: tuple[Sent, httpx2.AsyncClient],
    responses: bool,
    stream: bool,
) -> None:
    """Chat Completions and use_responses_api=True: a tool run, then a second turn with the history
    resent and (Responses) one chained by use_previous_response_id."""
    sent, http = recorded
    llm = chat_model(live, live_key, http, use_responses_api=responses)
    history: list[BaseMessage] = [HumanMessage(ASK)]
    steps = await tool_loop(llm.bind_tools([get_weather]), history, stream)
    assert steps == 2
    assert [m.text for m in history[2:]] == [WEATHER_IN_PARIS, ANSWER]
    assert calls_for(llm_server, ASK)[-1] == FIRST_TURN

    resent = [*history, HumanMessage(RESENT)]
    await tool_loop(llm.bind_tools([get_weather]), resent, stream)
    assert resent[-1].text == f"echo: {RESENT}"
    assert calls_for(llm_server, RESENT) == [second_turn(RESENT)]
    if not responses:
        assert sent.items() == [
            (None, ["user"]),
            (None, ["user", "assistant", "tool"]),
            (None, ["user", "assistant", "tool", "assistant", "user"]),
        ]
        assert llm_server.state.rejections == []
        return

    # use_previous_response_id: only what follows the last answer goes, chained to that answer.
    chained_llm = chat_model(live, live_key, http, use_responses_api=True, use_previous_response_id=True)
    chained = [*history, HumanMessage(CHAINED)]
    await tool_loop(chained_llm.bind_tools([get_weather]), chained, stream)
    assert chained[-1].text == f"echo: {CHAINED}"
    assert calls_for(llm_server, CHAINED) == [second_turn(CHAINED)]
    whole_run = ["message", "message", "function_call", "function_call_output"]
    assert sent.items() == [
        (None, ["message"]),
        (None, whole_run),
        (None, [*whole_run, "message", "message"]),
        (history[-1].response_metadata["id"], ["message"]),
    ]
    assert llm_server.state.rejections == []
