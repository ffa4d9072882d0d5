"""What real clients send under /v1 besides plain turns: `item_reference`s to items we issued (the
Vercel AI SDK), whole histories without previous_response_id (the OpenAI Agents SDK), and malformed
histories, which are a 400 naming the item and never reach the model."""

from __future__ import annotations

import json
from typing import Any, cast

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError
from openai.types.responses import FunctionToolParam, Response, ResponseInputParam

from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live, statements_sent
from tests.openai.conftest import conversations, message_id, messages, sdk

WEATHER = cast(
    FunctionToolParam,
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
)
ASK = 'weather? [[tool:get_weather {"city": "Paris"}]]'


def texts(message: dict[str, Any]) -> list[str]:
    """A sent message's blocks, in short: text, or the call / result it is."""
    out = []
    for block in message["content"]:
        if block["type"] == "text":
            out.append(block["text"])
        elif block["type"] == "tool_use":
            out.append(f"use {block['id']}")
        else:
            out.append(f"result {block['tool_use_id']}: {block['content']}")
    return out


def sent(llm_server: FakeLLMServer) -> list[tuple[str, list[str]]]:
    """What the model was last sent: each message's role and blocks."""
    return [(m["role"], texts(m)) for m in llm_server.state.request_bodies()[-1]["messages"]]


async def create(oai: AsyncOpenAI, stream: bool, **body: Any) -> Response:
    if not stream:
        made: Response = await oai.responses.create(model="agentchat", **body)
        return made
    async with oai.responses.stream(model="agentchat", **body) as events:
        return await events.get_final_response()


# --- item_reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_multi_step_run_by_reference(oai: AsyncOpenAI, llm_server: FakeLLMServer, stream: bool) -> None:
    """The Vercel AI SDK's second step: the call it was given, by reference, then its output."""
    first = await create(oai, stream, input=[{"role": "user", "content": ASK}], tools=[WEATHER])
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.id is not None
    second = await create(
        oai,
        stream,
        input=cast(
            ResponseInputParam,
            [
                {"role": "user", "content": ASK},
                {"type": "item_reference", "id": call.id},
                {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
            ],
        ),
        tools=[WEATHER],
    )
    assert second.output_text == "tool results: sunny"
    assert sent(llm_server) == [
        ("user", [ASK]),
        ("assistant", [f"use {call.call_id}"]),
        ("user", [f"result {call.call_id}: sunny"]),
    ]
    assert llm_server.state.rejections == []


async def test_every_id_we_issue_resolves_to_its_item(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    """Messages (the answer's and the input's), our tool calls and function outputs, by reference:
    the model sees what it sees when the client chains on the response."""
    made = await oai.responses.create(model="agentchat", input='sum [[tool:calculator {"expression": "6*7"}]]')
    await oai.responses.create(model="agentchat", input="next", previous_response_id=made.id)
    chained = sent(llm_server)
    [question] = (await oai.responses.input_items.list(made.id)).data
    refs = [str(question.id), *(str(item.id) for item in made.output)]
    assert [r.split("_")[0] for r in refs] == ["msg", "msg", "mcp", "msg"]
    by_reference = [{"type": "item_reference", "id": r} for r in refs]
    await oai.responses.create(
        model="agentchat", input=cast(ResponseInputParam, [*by_reference, {"role": "user", "content": "next"}])
    )
    assert sent(llm_server) == chained
    # A function_call_output we listed (fco_…) resolves too.
    asked = await oai.responses.create(model="agentchat", input=ASK, tools=[WEATHER])
    [call] = [item for item in asked.output if item.type == "function_call"]
    answered = await oai.responses.create(
        model="agentchat",
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
        tools=[WEATHER],
    )
    [output] = (await oai.responses.input_items.list(answered.id)).data
    again = await oai.responses.create(
        model="agentchat",
        input=cast(
            ResponseInputParam,
            [
                {"role": "user", "content": ASK},
                {"type": "item_reference", "id": f"fc_{call.call_id}"},
                {"type": "item_reference", "id": output.id},
            ],
        ),
        tools=[WEATHER],
    )
    assert again.output_text == "tool results: rain"
    assert llm_server.state.rejections == []


async def test_another_keys_items_are_not_found(oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer) -> None:
    made = await oai.responses.create(model="agentchat", input='[[tool:calculator {"expression": "1+1"}]]')
    ids = [item.id for item in made.output]
    before = llm_server.state.request_count
    async with sdk(live, await make_key(live.state, "other")) as other:
        for item_id in [*ids, "msg_nope", "fc_", "resp_" + "0" * 32]:
            with pytest.raises(NotFoundError) as caught:
                await other.responses.create(
                    model="agentchat",
                    input=cast(
                        ResponseInputParam,
                        [{"role": "user", "content": "hi"}, {"type": "item_reference", "id": item_id}],
                    ),
                )
            assert caught.value.body["param"] == "input[1].id", item_id  # type: ignore[index]
    assert llm_server.state.request_count == before


# --- a client's own history -------------------------------------------------------------------

AGENTS_SDK_INPUT: Any = [
    {"role": "user", "content": "one"},
    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "uno"}]},
    {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Rome"}'},
    {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    {"role": "user", "content": "two"},
]


async def test_a_response_id_stands_for_the_history_it_was_sent(
    oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer
) -> None:
    """The Agents SDK's default: every item itself, then a chain on that response."""
    made = await oai.responses.create(model="agentchat", input=AGENTS_SDK_INPUT, tools=[WEATHER])
    first = sent(llm_server)
    assert first == [
        ("user", ["one"]),
        ("assistant", ["uno", "use call_1"]),
        ("user", ["result call_1: sunny", "two"]),
    ]
    await oai.responses.create(model="agentchat", input="three", previous_response_id=made.id, tools=[WEATHER])
    assert sent(llm_server) == [*first, ("assistant", [made.output_text]), ("user", ["three"])]
    items = (await oai.responses.input_items.list(made.id, order="asc")).data
    assert [(i.type, getattr(i, "role", None)) for i in items] == [
        ("message", "user"),
        ("message", "assistant"),
        ("function_call", None),
        ("function_call_output", None),
        ("message", "user"),
    ]
    [conversation] = await conversations(live.state)
    rows = await messages(live.state, conversation.id)
    assert [r.role for r in rows] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert rows[3].id == message_id(made.id)
    assert llm_server.state.rejections == []
    await oai.responses.delete(made.id)  # its whole input goes with it
    assert [r.role for r in await messages(live.state, conversation.id)] == ["user", "assistant"]


async def test_a_history_costs_no_statement_more(oai: AsyncOpenAI, live: Live) -> None:
    """Stored in phase 1's one statement: a turn with a history is still two statements."""
    await oai.responses.create(model="agentchat", input="warm up")
    for body in [{"input": "plain"}, {"input": AGENTS_SDK_INPUT, "tools": [WEATHER]}]:
        before = statements_sent(live.state)
        await oai.responses.create(model="agentchat", **body)
        assert statements_sent(live.state) - before == 2, body


async def test_a_chat_completions_history_is_stored_with_its_conversation(oai: AsyncOpenAI, live: Live) -> None:
    await oai.chat.completions.create(
        model="agentchat",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "uno"},
            {"role": "user", "content": "two"},
        ],
    )
    [conversation] = await conversations(live.state)
    rows = await messages(live.state, conversation.id)
    assert [(r.role, r.content[0]["text"]) for r in rows] == [
        ("user", "one"),
        ("assistant", "uno"),
        ("user", "two"),
        ("assistant", "echo: two"),
    ]


# --- malformed histories ----------------------------------------------------------------------

CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
BAD_CHATS: list[tuple[list[dict[str, Any]], str]] = [
    ([{"role": "tool", "tool_call_id": "nope", "content": "x"}], "messages[0].tool_call_id"),
    (
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "b", "content": "x"},
        ],
        "messages[2].tool_call_id",
    ),
    (
        [{"role": "user", "content": None}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
        "messages[0].content",
    ),
    (
        [{"role": "assistant", "tool_calls": [CALL, CALL]}, {"role": "user", "content": "c"}],
        "messages[0].tool_calls[1].id",
    ),
    (
        [
            {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "a b", "arguments": "{}"}}]},
            {"role": "user", "content": "c"},
        ],
        "messages[0].tool_calls[0].function.name",
    ),
    (
        [{"role": "assistant", "tool_calls": [{**CALL, "id": "a.b"}]}, {"role": "user", "content": "c"}],
        "messages[0].tool_calls[0].id",
    ),
    ([{"role": "user", "content": "\ud800"}], "messages[0].content"),
]
BAD_INPUTS: list[tuple[list[dict[str, Any]], str]] = [
    ([{"type": "function_call_output", "call_id": "nope", "output": "x"}], "input[0].call_id"),
    (
        [
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "x"},
            {"role": "assistant", "content": "ok"},
            {"type": "function_call_output", "call_id": "c1", "output": "again"},
        ],
        "input[3].call_id",
    ),
    ([{"role": "user"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}], "input[0].content"),
    ([{"type": "function_call", "name": "f", "arguments": "{}"}, {"role": "user", "content": "c"}], "input[0].call_id"),
    ([{"role": "user", "content": [{"type": "input_text", "text": "\x00"}]}], "input[0].content"),
    ([{"role": "user", "content": 7}], "input[0].content"),
]


async def test_a_malformed_history_is_a_400_naming_the_item(
    live: Live, live_key: str, llm_server: FakeLLMServer
) -> None:
    """Sent as JSON as any client may (lone surrogates too): a 400 with the item's param, no model call."""
    headers = {"Authorization": f"Bearer {live_key}", "Content-Type": "application/json"}
    calls: list[tuple[str, dict[str, Any], str]] = [("chat/completions", {"messages": m}, p) for m, p in BAD_CHATS]
    calls += [("responses", {"input": i, "tools": [WEATHER]}, p) for i, p in BAD_INPUTS]
    async with httpx.AsyncClient(base_url=f"{live.url}/v1", headers=headers) as client:
        for path, body, param in calls:
            raw = json.dumps({"model": "agentchat", **body})  # ASCII: a lone surrogate as its escape
            r = await client.post(f"/{path}", content=raw)
            assert (r.status_code, r.json()["error"]["param"]) == (400, param), (body, r.text)
    assert llm_server.state.request_count == 0


async def test_a_function_output_must_answer_the_previous_responses_call(
    oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer
) -> None:
    made = await oai.responses.create(model="agentchat", input="no calls here")
    [conversation] = await conversations(live.state)
    before = (llm_server.state.request_count, len(await messages(live.state, conversation.id)))
    with pytest.raises(BadRequestError) as caught:
        await oai.responses.create(
            model="agentchat",
            previous_response_id=made.id,
            input=[{"type": "function_call_output", "call_id": "call_9", "output": "x"}],
        )
    assert caught.value.body["param"] == "input[0].call_id"  # type: ignore[index]
    assert (llm_server.state.request_count, len(await messages(live.state, conversation.id))) == before


async def test_what_can_be_repaired_is(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    """A history that opens with the assistant, consecutive user messages, a call left without its
    result, blank instructions: answered, and the model is sent a valid request."""
    await oai.responses.create(
        model="agentchat",
        instructions="   ",
        input=[
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
            {"role": "user", "content": "three"},
        ],
        tools=[WEATHER],
    )
    await oai.chat.completions.create(
        model="agentchat",
        messages=[
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "one"},
            {"role": "user", "content": "  "},
            {"role": "assistant", "tool_calls": [CALL]},  # type: ignore[list-item]
            {"role": "user", "content": "two"},
        ],
    )
    assert llm_server.state.request_count == 2
    assert llm_server.state.rejections == []
