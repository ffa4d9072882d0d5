"""POST /v1/chat/completions and GET /v1/models through the official SDK: the client owns the
history, each call is a recorded turn, and a chat's calls land in one conversation."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError
from openai.types.chat import (
    ChatCompletionFunctionToolParam,
    ChatCompletionMessageFunctionToolCall,
    ChatCompletionMessageParam,
)

from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live
from tests.openai.conftest import conversations, message_id, messages, sdk


async def test_models_lists_the_agent_and_its_model(oai: AsyncOpenAI) -> None:
    models = [m.id async for m in oai.models.list()]
    assert models == ["agentchat", "claude-test"]
    assert (await oai.models.retrieve("agentchat")).id == "agentchat"
    with pytest.raises(NotFoundError):
        await oai.models.retrieve("gpt-4o")


async def test_a_completion_is_a_recorded_turn(oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer) -> None:
    done = await oai.chat.completions.create(
        model="agentchat",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}],
        metadata={"source": "test"},
    )
    assert done.object == "chat.completion"
    assert done.choices[0].message.content == "echo: hello there"
    assert done.choices[0].finish_reason == "stop"
    assert done.usage is not None
    assert done.usage.prompt_tokens > 0
    assert done.usage.completion_tokens > 0
    sent = llm_server.state.request_bodies()[-1]
    assert sent["system"][0]["text"] == "Be brief."
    [conversation] = await conversations(live.state)
    assert (conversation.title, conversation.system) == ("hello there", "Be brief.")
    user, answer = await messages(live.state, conversation.id)
    assert user.content == [{"type": "text", "text": "hello there"}]
    assert answer.id == message_id(done.id)
    assert (answer.status, answer.output_tokens) == ("complete", done.usage.completion_tokens)
    assert answer.attributes is not None
    assert answer.attributes["metadata"] == {"source": "test"}


async def test_a_chat_is_one_conversation(oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer) -> None:
    """Each call sends the whole history back; it lands in the conversation it extends."""
    history: list[Any] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one"}]
    for text in ["two", "three"]:
        done = await oai.chat.completions.create(model="claude-test", messages=history)
        history += [
            {"role": "assistant", "content": done.choices[0].message.content},
            {"role": "user", "content": text},
        ]
    last = await oai.chat.completions.create(model="agentchat", messages=history)
    # The model saw the client's history as it was sent.
    sent = llm_server.state.request_bodies()[-1]["messages"]
    assert [m["content"][0]["text"] for m in sent] == ["one", "echo: one", "two", "echo: two", "three"]
    [conversation] = await conversations(live.state)
    rows = await messages(live.state, conversation.id)
    assert [r.content[0]["text"] for r in rows] == ["one", "echo: one", "two", "echo: two", "three", "echo: three"]
    assert rows[-1].id == message_id(last.id)
    # The client edits its last message (a UI's "edit"): the history up to the answer before it is
    # this chat's, so the new message is a branch below that answer, beside the one it replaces.
    await oai.chat.completions.create(model="agentchat", messages=[*history[:-1], {"role": "user", "content": "3!"}])
    rows = await messages(live.state, conversation.id)
    three, edit = [r for r in rows if r.role == "user" and r.content[0]["text"] in ("three", "3!")]
    assert edit.parent_id == three.parent_id
    assert rows[3].id == three.parent_id
    # A history the client changed is another chat: a new conversation.
    edited = [*history[:2], {"role": "assistant", "content": "something else"}, {"role": "user", "content": "x"}]
    await oai.chat.completions.create(model="agentchat", messages=edited)
    assert len(await conversations(live.state)) == 2


async def test_another_keys_identical_chat_is_its_own(oai: AsyncOpenAI, live: Live, live_key: str) -> None:
    history: list[Any] = [{"role": "user", "content": "same words"}]
    first = await oai.chat.completions.create(model="agentchat", messages=history)
    history += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "more"}]
    async with sdk(live, await make_key(live.state, "other")) as other:
        await other.chat.completions.create(model="agentchat", messages=history)
    assert len(await conversations(live.state)) == 2  # the other key's call matched nothing of ours


async def test_streamed_completion_with_usage(oai: AsyncOpenAI, live: Live) -> None:
    stream = await oai.chat.completions.create(
        model="agentchat",
        messages=[{"role": "user", "content": "[[words:5]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "word1 word2 word3 word4 word5"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5
    [conversation] = await conversations(live.state)
    answer = (await messages(live.state, conversation.id))[-1]
    assert answer.id == message_id(chunks[0].id)
    assert answer.content[0]["text"] == text


async def test_our_tools_run_inside_the_turn(oai: AsyncOpenAI) -> None:
    done = await oai.chat.completions.create(
        model="agentchat", messages=[{"role": "user", "content": '[[tool:calculator {"expression": "6*7"}]]'}]
    )
    assert done.choices[0].finish_reason == "stop"
    assert done.choices[0].message.tool_calls is None
    assert done.choices[0].message.content == "Let me use calculator.\n\ntool results: 42"


WEATHER: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_tool_round_trip(oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer, stream: bool) -> None:
    """The model calls the client's function: the turn ends with tool_calls; the result continues it."""
    history: list[Any] = [{"role": "user", "content": 'weather? [[tool:get_weather {"city": "Paris"}]]'}]
    if stream:
        chunks = [
            c
            async for c in await oai.chat.completions.create(
                model="agentchat", messages=history, tools=[WEATHER], stream=True
            )
        ]
        calls = [call for c in chunks for call in c.choices[0].delta.tool_calls or []]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
        content: str | None = "".join(c.choices[0].delta.content or "" for c in chunks)
        function = calls[0].function
        assert function is not None
        call_id, name, arguments = calls[0].id, function.name, function.arguments
    else:
        done = await oai.chat.completions.create(model="agentchat", messages=history, tools=[WEATHER])
        message = done.choices[0].message
        assert message.tool_calls is not None
        finish, content = [done.choices[0].finish_reason], message.content
        call = message.tool_calls[0]
        assert isinstance(call, ChatCompletionMessageFunctionToolCall)
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
    assert finish == ["tool_calls"]
    assert arguments is not None
    assert (name, json.loads(arguments)) == ("get_weather", {"city": "Paris"})
    # The client's tool was offered beside ours.
    offered = [t["name"] for t in llm_server.state.request_bodies()[-1]["tools"]]
    assert "get_weather" in offered
    assert "calculator" in offered
    history += [
        {
            "role": "assistant",
            "content": content,
            "tool_calls": [{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21°C"},
    ]
    done = await oai.chat.completions.create(model="agentchat", messages=history, tools=[WEATHER])
    assert done.choices[0].message.content == "tool results: sunny, 21°C"
    assert llm_server.state.rejections == []
    # One conversation: the call, the tool result, the answer.
    [conversation] = await conversations(live.state)
    rows = await messages(live.state, conversation.id)
    assert [r.role for r in rows] == ["user", "assistant", "user", "assistant"]
    assert rows[1].content[-1] == {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": "Paris"}}
    assert rows[2].content == [{"type": "tool_result", "tool_use_id": call_id, "content": "sunny, 21°C"}]


async def test_bad_input_names_the_field(oai: AsyncOpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": []}, "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages[0].content[0].image_url.url",  # neither a data: nor an http(s) URL
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
        (
            {
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "function", "function": {"name": "calculator"}}],
            },
            "tools[0].function.name",
        ),
        ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "messages[1]"),
        (
            {
                "messages": [{"role": "user", "content": "hi"}],
                "tool_choice": {"type": "function", "function": {"name": "nope"}},
            },
            "tool_choice",
        ),
    ]
    for body, param in cases:
        with pytest.raises(BadRequestError) as caught:
            await oai.chat.completions.create(model="agentchat", **body)
        error: Any = caught.value.body
        assert (error["param"], error["type"]) == (param, "invalid_request_error"), body
        assert caught.value.response.headers["x-request-id"]
    with pytest.raises(NotFoundError) as missing:
        await oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert (missing.value.body["param"], missing.value.body["code"]) == ("model", "model_not_found")  # type: ignore[index]


async def test_max_tokens_caps_the_call(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    await oai.chat.completions.create(model="agentchat", messages=[{"role": "user", "content": "hi"}], max_tokens=7)
    assert llm_server.state.request_bodies()[-1]["max_tokens"] == 7
    await oai.chat.completions.create(
        model="agentchat", messages=[{"role": "user", "content": "hi"}], max_completion_tokens=10**6
    )
    assert llm_server.state.request_bodies()[-1]["max_tokens"] == 1024  # never above LLM_MAX_TOKENS


async def test_an_idempotent_retry_of_a_stream_replays_it(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    key = {"Idempotency-Key": "c-1"}
    ask: Any = {"model": "agentchat", "messages": [{"role": "user", "content": "[[words:3]]"}], "stream": True}
    first = [c async for c in await oai.chat.completions.create(**ask, extra_headers=key)]
    calls = llm_server.state.request_count
    again = [c async for c in await oai.chat.completions.create(**ask, extra_headers=key)]
    assert llm_server.state.request_count == calls
    assert {c.id for c in again} == {c.id for c in first}

    def text(chunks: list[Any]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    assert text(again) == text(first) == "word1 word2 word3"


async def test_tool_choice_applies_to_the_first_model_call(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    ask: list[ChatCompletionMessageParam] = [{"role": "user", "content": '[[tool:calculator {"expression": "1+1"}]]'}]
    await oai.chat.completions.create(model="agentchat", messages=ask, tool_choice="required")
    first, second = llm_server.state.request_bodies()[-2:]
    assert first["tool_choice"] == {"type": "any"}
    assert "tool_choice" not in second  # then the model may answer
    await oai.chat.completions.create(
        model="agentchat", messages=[{"role": "user", "content": "hi"}], tool_choice="none"
    )
    assert llm_server.state.request_bodies()[-1]["tool_choice"] == {"type": "none"}
