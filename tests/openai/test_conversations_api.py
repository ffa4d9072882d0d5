"""OpenAI's Conversations API through the official SDK (`client.conversations.*`): agentchat's own
conversations, the same ones across doors, owner-scoped."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError
from openai.types.conversations import Message

from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live
from tests.openai.conftest import conversations, message_id, messages, sdk


def uuid_of(conversation_id: str) -> uuid.UUID:
    return uuid.UUID(hex=conversation_id.removeprefix("conv_"))


def texts(items: list[Any]) -> list[tuple[str, Any]]:
    return [(i.role, getattr(i.content[0], "text", None)) for i in items if isinstance(i, Message)]


async def test_create_retrieve_update_delete(oai: AsyncOpenAI, live: Live, live_key: str) -> None:
    made = await oai.conversations.create(
        items=[
            {"type": "message", "role": "developer", "content": "Be terse."},
            {"type": "message", "role": "user", "content": "my name is Ada"},
            {"type": "message", "role": "assistant", "content": "Hello, Ada."},
        ],
        metadata={"topic": "names"},
    )
    assert made.id.startswith("conv_")
    assert (made.object, made.metadata) == ("conversation", {"topic": "names"})
    assert (await oai.conversations.retrieve(made.id)).model_dump() == made.model_dump()
    updated = await oai.conversations.update(made.id, metadata={"topic": "other"})
    assert updated.metadata == {"topic": "other"}
    # The same conversation at the other door: listed, with its instructions and items.
    [stored] = await conversations(live.state)
    assert (stored.id, stored.title, stored.system) == (uuid_of(made.id), "my name is Ada", "Be terse.")
    auth = {"Authorization": f"Bearer {live_key}"}
    async with httpx.AsyncClient(base_url=live.url, headers=auth) as client:
        listed = (await client.get("/conversations")).json()["items"]
        shown = (await client.get(f"/conversations/{stored.id}/messages")).json()["items"]
        assert [c["id"] for c in listed] == [str(stored.id)]
        assert [(m["role"], m["content"]) for m in shown] == [("user", "my name is Ada"), ("assistant", "Hello, Ada.")]
        deleted = await oai.conversations.delete(made.id)
        assert (deleted.id, deleted.deleted, deleted.object) == (made.id, True, "conversation.deleted")
        with pytest.raises(NotFoundError):
            await oai.conversations.retrieve(made.id)
        assert (await client.get(f"/conversations/{stored.id}")).status_code == 404
    with pytest.raises(NotFoundError):
        await oai.conversations.delete(made.id)


async def test_items_list_add_retrieve_delete(oai: AsyncOpenAI) -> None:
    made = await oai.conversations.create(items=[{"role": "user", "content": f"n{n}"} for n in range(5)])
    # OpenAI's cursor pagination (newest first unless asc): the SDK walks it with `after`.
    page: dict[str, Any] = (await oai.conversations.items.list(made.id, limit=2)).to_dict()
    assert (len(page["data"]), page["has_more"]) == (2, True)
    assert (page["first_id"], page["last_id"]) == (page["data"][0]["id"], page["data"][1]["id"])
    walked = [item async for item in oai.conversations.items.list(made.id, limit=2)]
    assert texts(walked) == [("user", f"n{n}") for n in reversed(range(5))]
    ascending = [item async for item in oai.conversations.items.list(made.id, order="asc", limit=3)]
    assert [i.id for i in ascending] == [i.id for i in reversed(walked)]
    adding: list[Any] = [
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    added = await oai.conversations.items.create(made.id, items=adding)
    assert [i.type for i in added.data] == ["message", "function_call", "function_call_output"]
    assert (added.first_id, added.last_id) == (added.data[0].id, "fco_call_1")
    call = await oai.conversations.items.retrieve("fc_call_1", conversation_id=made.id)
    assert (call.type, getattr(call, "arguments", None)) == ("function_call", '{"city": "Paris"}')
    after_delete = await oai.conversations.items.delete("fc_call_1", conversation_id=made.id)
    assert after_delete.id == made.id
    left = [item async for item in oai.conversations.items.list(made.id, order="asc")]
    assert [i.type for i in left] == ["message"] * 6 + ["function_call_output"]
    with pytest.raises(NotFoundError):
        await oai.conversations.items.retrieve("fc_call_1", conversation_id=made.id)
    with pytest.raises(NotFoundError):
        await oai.conversations.items.delete("msg_nope", conversation_id=made.id)


async def test_bad_items_are_400s_naming_the_item(oai: AsyncOpenAI) -> None:
    made = await oai.conversations.create()
    cases: list[tuple[list[Any], str]] = [
        ([{"type": "message", "role": "system", "content": "later instructions"}], "items[0].role"),
        ([{"role": "user", "content": "ok"}, {"type": "web_search_call", "id": "ws_1"}], "items[1].type"),
        ([{"type": "function_call", "call_id": "bad id!", "name": "f", "arguments": "{}"}], "items[0].call_id"),
        ([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}], "items[0].content[0].type"),
        ([{"role": "user", "content": str(n)} for n in range(21)], "items"),
    ]
    for items, param in cases:
        with pytest.raises(BadRequestError) as caught:
            await oai.conversations.items.create(made.id, items=items)
        assert caught.value.param == param, items
    assert [item async for item in oai.conversations.items.list(made.id)] == []


async def test_a_response_is_a_turn_of_its_conversation(
    oai: AsyncOpenAI, live: Live, live_key: str, llm_server: FakeLLMServer
) -> None:
    made = await oai.conversations.create(
        items=[
            {"role": "developer", "content": "Be terse."},
            {"role": "user", "content": "my name is Ada"},
            {"role": "assistant", "content": "Hello, Ada."},
        ]
    )
    first = await oai.responses.create(model="agentchat", conversation=made.id, input="what is my name?")
    assert first.conversation is not None
    assert first.conversation.id == made.id
    sent = llm_server.state.request_bodies()[-1]
    assert sent["system"][0]["text"] == "Be terse."  # the conversation's instructions
    assert [m["content"][0]["text"] for m in sent["messages"]] == ["my name is Ada", "Hello, Ada.", "what is my name?"]
    # Streamed, with the {"id": …} form; then /chat continues the same conversation.
    stream = await oai.responses.create(
        model="agentchat", conversation={"id": made.id}, input="again", instructions="Be kind.", stream=True
    )
    done = [event async for event in stream][-1]
    assert done.type == "response.completed"
    assert llm_server.state.request_bodies()[-1]["system"][0]["text"] == "Be kind."  # the response's own
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {live_key}"}) as client:
        chat = await client.post("/chat", json={"message": "and now?", "conversation_id": str(uuid_of(made.id))})
    assert chat.json()["conversation_id"] == str(uuid_of(made.id))
    [stored] = await conversations(live.state)
    rows = await messages(live.state, stored.id)
    assert [r.content[0]["text"] for r in rows] == [
        "my name is Ada",
        "Hello, Ada.",
        "what is my name?",
        "echo: what is my name?",
        "again",
        "echo: again",
        "and now?",
        "echo: and now?",
    ]
    assert rows[3].id == message_id(first.id)
    items = [item async for item in oai.conversations.items.list(made.id, order="asc")]
    assert items[3].id == f"msg_{rows[3].id.hex}_0"  # the response's output item, by the same id
    with pytest.raises(BadRequestError) as caught:
        await oai.responses.create(model="agentchat", conversation=made.id, previous_response_id=first.id, input="both")
    assert caught.value.param == "conversation"


async def test_a_conversation_from_chat_is_open_here(oai: AsyncOpenAI, live: Live, live_key: str) -> None:
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {live_key}"}) as client:
        chat = (await client.post("/chat", json={"message": "hi"})).json()
    conversation_id = uuid.UUID(chat["conversation_id"])
    for given in (f"conv_{conversation_id.hex}", str(conversation_id)):
        assert (await oai.conversations.retrieve(given)).id == f"conv_{conversation_id.hex}"
    items = [item async for item in oai.conversations.items.list(f"conv_{conversation_id.hex}", order="asc")]
    assert texts(items) == [("user", "hi"), ("assistant", "echo: hi")]


async def test_another_keys_conversation_is_not_found(oai: AsyncOpenAI, live: Live) -> None:
    made = await oai.conversations.create(items=[{"role": "user", "content": "mine"}], metadata={"k": "v"})
    [item] = (await oai.conversations.items.list(made.id)).data
    assert item.id is not None
    async with sdk(live, await make_key(live.state, "other")) as other:
        attempts: list[Awaitable[object]] = [
            other.conversations.retrieve(made.id),
            other.conversations.update(made.id, metadata={"k": "theirs"}),
            other.conversations.delete(made.id),
            other.conversations.items.list(made.id),
            other.conversations.items.create(made.id, items=[{"role": "user", "content": "intrude"}]),
            other.conversations.items.retrieve(item.id, conversation_id=made.id),
            other.conversations.items.delete(item.id, conversation_id=made.id),
            other.responses.create(model="agentchat", conversation=made.id, input="intrude"),
        ]
        for attempt in attempts:
            with pytest.raises(NotFoundError):
                await attempt
    assert (await oai.conversations.retrieve(made.id)).metadata == {"k": "v"}
    assert texts([i async for i in oai.conversations.items.list(made.id)]) == [("user", "mine")]
    with pytest.raises(NotFoundError) as caught:
        await oai.responses.create(model="agentchat", conversation="conv_nope", input="hi")
    assert caught.value.param == "conversation"
