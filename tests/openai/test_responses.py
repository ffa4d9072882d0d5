"""/v1/responses through the official SDK: create, stream, retrieve, chains, tools, input items, delete."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from openai import AsyncOpenAI, BadRequestError, ConflictError, NotFoundError
from openai.types.responses import FunctionToolParam, Response, ResponseInputMessageItem, ResponseInputText

from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live, eventually
from tests.openai.conftest import conversations, message_id, messages, sdk


def shown(response: Any) -> list[tuple[Any, ...]]:
    """What a client shows of a response's output (the stream helper's parsed copy has extra fields)."""
    return [
        (i.id, i.type, i.status, getattr(i, "output", None), getattr(i, "arguments", None)) for i in response.output
    ]


async def test_create_and_retrieve(oai: AsyncOpenAI, live: Live) -> None:
    made = await oai.responses.create(
        model="agentchat", input="hello there", instructions="Be brief.", metadata={"k": "v"}
    )
    assert (made.status, made.output_text, made.metadata) == ("completed", "echo: hello there", {"k": "v"})
    assert made.usage is not None
    assert made.usage.output_tokens > 0
    again = await oai.responses.retrieve(made.id)
    assert again.model_dump() == made.model_dump()
    [conversation] = await conversations(live.state)
    rows = await messages(live.state, conversation.id)
    assert rows[-1].id == message_id(made.id)
    assert conversation.system == "Be brief."
    items = await oai.responses.input_items.list(made.id)
    [item] = items.data
    assert isinstance(item, ResponseInputMessageItem)
    assert isinstance(item.content[0], ResponseInputText)
    assert (item.type, item.role, item.content[0].text) == ("message", "user", "hello there")


async def test_a_chain_of_responses_is_one_conversation(
    oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer
) -> None:
    first = await oai.responses.create(model="agentchat", input="one")
    second = await oai.responses.create(model="agentchat", input="two", previous_response_id=first.id)
    third = await oai.responses.create(model="agentchat", input="three", previous_response_id=second.id)
    assert third.previous_response_id == second.id
    sent = llm_server.state.request_bodies()[-1]["messages"]
    assert [m["content"][0]["text"] for m in sent] == ["one", "echo: one", "two", "echo: two", "three"]
    # From an earlier response: the history up to it (a branch), in the same conversation.
    again = await oai.responses.create(model="agentchat", input="again", previous_response_id=first.id)
    sent = llm_server.state.request_bodies()[-1]["messages"]
    assert [m["content"][0]["text"] for m in sent] == ["one", "echo: one", "again"]
    assert len(await conversations(live.state)) == 1
    # That branch goes on without the other one's turns, which stay on theirs.
    await oai.responses.create(model="agentchat", input="on", previous_response_id=again.id)
    sent = llm_server.state.request_bodies()[-1]["messages"]
    assert [m["content"][0]["text"] for m in sent] == ["one", "echo: one", "again", "echo: again", "on"]
    await oai.responses.create(model="agentchat", input="four", previous_response_id=third.id)
    sent = llm_server.state.request_bodies()[-1]["messages"]
    texts = ["one", "echo: one", "two", "echo: two", "three", "echo: three", "four"]
    assert [m["content"][0]["text"] for m in sent] == texts


async def test_streamed_response_events(oai: AsyncOpenAI, live: Live) -> None:
    async with oai.responses.stream(model="agentchat", input="[[words:4]]") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "word1 word2 word3 word4"
    again = await oai.responses.retrieve(final.id)
    assert (shown(final), final.output_text, final.usage) == (shown(again), again.output_text, again.usage)


async def test_our_tools_show_as_mcp_calls(oai: AsyncOpenAI) -> None:
    ask = '[[tool:calculator {"expression": "6*7"}]]'
    made = await oai.responses.create(model="agentchat", input=ask)
    assert [item.type for item in made.output] == ["message", "mcp_call", "message"]
    call: Any = made.output[1]
    assert (call.name, json.loads(call.arguments), call.output, call.status) == (
        "calculator",
        {"expression": "6*7"},
        "42",
        "completed",
    )
    assert made.output_text == "Let me use calculator.tool results: 42"
    async with oai.responses.stream(model="agentchat", input=ask) as stream:
        final = await stream.get_final_response()
    assert shown(final) == shown(await oai.responses.retrieve(final.id))


# The SDK's FunctionToolParam requires "strict"; the API (and this service) take it as optional.
WEATHER = cast(
    FunctionToolParam,
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_client_function_round_trip(
    oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer, stream: bool
) -> None:
    ask = 'weather? [[tool:get_weather {"city": "Paris"}]]'
    made: Response
    if stream:
        async with oai.responses.stream(model="agentchat", input=ask, tools=[WEATHER]) as events:
            made = await events.get_final_response()
    else:
        made = await oai.responses.create(model="agentchat", input=ask, tools=[WEATHER])
    calls: list[Any] = [item for item in made.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris"})]
    answered = await oai.responses.create(
        model="agentchat",
        previous_response_id=made.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert answered.output_text == "tool results: sunny"
    assert llm_server.state.rejections == []
    items = await oai.responses.input_items.list(answered.id)
    assert [(i.type, getattr(i, "output", None)) for i in items.data] == [("function_call_output", "sunny")]
    assert len(await conversations(live.state)) == 1


async def test_a_history_sent_as_input_is_the_context(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    await oai.responses.create(
        model="agentchat",
        input=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": "one"},
            {"role": "assistant", "content": "uno"},
            {"role": "user", "content": [{"type": "input_text", "text": "two"}]},
        ],
    )
    sent = llm_server.state.request_bodies()[-1]
    assert [m["content"][0]["text"] for m in sent["messages"]] == ["one", "uno", "two"]
    assert sent["system"][0]["text"] == "Be brief."


async def test_delete_and_another_keys_ids(oai: AsyncOpenAI, live: Live) -> None:
    made = await oai.responses.create(model="agentchat", input="mine")
    async with sdk(live, await make_key(live.state, "other")) as other:
        for call in (
            other.responses.retrieve(made.id),
            other.responses.delete(made.id),
            other.responses.cancel(made.id),
            other.responses.input_items.list(made.id),
            other.responses.create(model="agentchat", input="x", previous_response_id=made.id),
        ):
            with pytest.raises(NotFoundError):
                await call
    with pytest.raises(NotFoundError) as caught:
        await oai.responses.create(model="agentchat", input="x", previous_response_id="resp_nope")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    await oai.responses.delete(made.id)
    with pytest.raises(NotFoundError):
        await oai.responses.retrieve(made.id)
    assert await conversations(live.state) == []  # its only turn went with it


async def test_a_second_turn_on_a_running_chain_is_409(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    first = await oai.responses.create(model="agentchat", input="one")
    before = llm_server.state.request_count
    slow = await oai.responses.create(
        model="agentchat", input="[[delay_first:1]] slow", previous_response_id=first.id, background=True
    )
    await eventually(lambda: llm_server.state.request_count > before)
    with pytest.raises(ConflictError) as caught:
        await oai.responses.create(model="agentchat", input="me too", previous_response_id=first.id)
    assert caught.value.body["code"] == "conversation_busy"  # type: ignore[index]
    assert slow.status == "in_progress"

    async def finished() -> bool:
        return (await oai.responses.retrieve(slow.id)).status == "completed"

    await eventually(finished, timeout=5)
    assert (await oai.responses.retrieve(slow.id)).output_text == "echo: slow"


async def test_bad_input_names_the_field(oai: AsyncOpenAI) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"input": ""}, "input"),
        ({"input": [{"type": "input_image", "image_url": "x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].file_id",  # no such file
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
            "input[0].content[0].type",
        ),
        ({"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "hi", "background": True, "store": False}, "store"),
    ]
    for body, param in cases:
        with pytest.raises(BadRequestError) as caught:
            await oai.responses.create(model="agentchat", **body)
        assert caught.value.body["param"] == param, body  # type: ignore[index]


async def test_idempotent_retries_replay_the_answer(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    once = {"Idempotency-Key": "r-1"}
    first = await oai.responses.create(model="agentchat", input="once", extra_headers=once)
    calls = llm_server.state.request_count
    again = await oai.responses.create(model="agentchat", input="once", extra_headers=once)
    assert (again.id, again.output_text) == (first.id, first.output_text)
    twice = {"Idempotency-Key": "r-2"}
    async with oai.responses.stream(model="agentchat", input="[[words:3]]", extra_headers=twice) as stream:
        streamed = await stream.get_final_response()
    async with oai.responses.stream(model="agentchat", input="[[words:3]]", extra_headers=twice) as stream:
        replayed = await stream.get_final_response()
    assert shown(replayed) == shown(streamed)
    assert llm_server.state.request_count == calls + 1  # one model call for the two streams
    # A response that was not streamed reads as a stream all the same (after N, too).
    events = [e async for e in await oai.responses.retrieve(first.id, stream=True, starting_after=1)]
    assert [e.type for e in events][0] == "response.output_item.added"
    assert events[-1].type == "response.completed"


async def test_a_response_answered_as_json_streams_from_its_record_at_once(
    oai: AsyncOpenAI, live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It never ran: no run to look for (a fresh id unknown to Redis would be asked after for 2 s).
    created = await oai.responses.create(model="agentchat", input="plain")

    async def no_run(run_id: object) -> None:
        raise AssertionError(f"looked for a run of {run_id}")

    monkeypatch.setattr(live.state.runs, "find", no_run)
    events = [e async for e in await oai.responses.retrieve(created.id, stream=True)]
    assert events[0].type == "response.created"
    assert events[-1].type == "response.completed"
    assert cast(Any, events[-1]).response.output_text == created.output_text
