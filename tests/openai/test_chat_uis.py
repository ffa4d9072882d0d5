"""The /v1 door as Open WebUI and LibreChat drive it: the chat id decides the conversation, the user id
is recorded and filterable, background task calls are stateless, sampling parameters reach the
model, and the model list is in the shape both parse."""

from __future__ import annotations

from typing import Any

import httpx
from openai import AsyncOpenAI

from app.conversations.branches import ROOT
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live
from tests.openai.conftest import conversations, message_id, messages, sdk

# Open WebUI's default title template (backend/open_webui/config.py), as it renders it.
TITLE_PROMPT = """### Task:
Generate a concise, 3-5 word title with an emoji summarizing the chat history.
### Guidelines:
- The title should clearly represent the main theme or subject of the conversation.
- Write the title in the chat's primary language; default to English if multilingual.
### Output:
JSON format: { "title": "your concise title here" }
### Chat History:
<chat_history>
USER: what is 6*7? [[tool:calculator {"expression": "6*7"}]]
ASSISTANT: 42
</chat_history>"""
TAGS_PROMPT = """### Task:
Generate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 more specific subtopic tags.

### Output:
JSON format: { "tags": ["tag1", "tag2", "tag3"] }

### Chat History:
<chat_history>
USER: hello
</chat_history>"""


def owui(chat: str, user: str = "owui-user-1") -> dict[str, str]:
    return {"X-OpenWebUI-Chat-Id": chat, "X-OpenWebUI-User-Id": user}


async def test_models_answer_in_the_shape_chat_uis_parse(live: Live, live_key: str) -> None:
    """Open WebUI and LibreChat (`models: {fetch: true}`) read `data[].id` of an OpenAI model list."""
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {live_key}"}) as client:
        listed = (await client.get("/v1/models")).json()
        one = (await client.get("/v1/models/agentchat")).json()
    assert listed["object"] == "list"
    assert listed["data"]
    for model in listed["data"]:
        assert set(model) == {"id", "object", "created", "owned_by"}
        assert model["object"] == "model"
        assert isinstance(model["id"], str)
        assert isinstance(model["created"], int)
        assert isinstance(model["owned_by"], str)
    assert "agentchat" in [m["id"] for m in listed["data"]]
    assert one == next(m for m in listed["data"] if m["id"] == "agentchat")


async def test_a_chat_id_is_one_conversation_even_after_an_edit(
    oai: AsyncOpenAI, live: Live, live_key: str, llm_server: FakeLLMServer
) -> None:
    history: list[Any] = [{"role": "user", "content": "one"}]
    first = await oai.chat.completions.create(model="agentchat", messages=history, extra_headers=owui("chat-1"))
    history += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "two"}]
    await oai.chat.completions.create(model="agentchat", messages=history, extra_headers=owui("chat-1"))
    # The user edits the first message: the client's history no longer matches the stored one.
    edited: list[Any] = [{"role": "user", "content": "one, edited"}]
    stream = await oai.chat.completions.create(
        model="agentchat", messages=edited, stream=True, extra_headers=owui("chat-1")
    )
    last = [chunk async for chunk in stream]
    [conversation] = await conversations(live.state)
    assert (conversation.external_id, conversation.end_user) == ("chat-1", "owui-user-1")
    # The model saw the history as the client sent it; the conversation recorded every call's turn.
    assert [m["content"][0]["text"] for m in llm_server.state.request_bodies()[-1]["messages"]] == ["one, edited"]
    rows = await messages(live.state, conversation.id)
    assert [r.content[0]["text"] for r in rows] == [
        "one",
        "echo: one",
        "two",
        "echo: two",
        "one, edited",
        "echo: one, edited",
    ]
    assert rows[-1].id == message_id(last[0].id)
    # Stored as branches: the edited first message beside the first one; an edit of "two" beside it.
    assert rows[4].parent_id == ROOT  # a first message of its own
    assert rows[2].parent_id == rows[1].id
    await oai.chat.completions.create(
        model="agentchat", messages=[*history[:2], {"role": "user", "content": "2"}], extra_headers=owui("chat-1")
    )
    rows = await messages(live.state, conversation.id)
    assert rows[-2].content[0]["text"] == "2"
    assert rows[-2].parent_id == rows[1].id  # below "echo: one", beside "two"
    auth = {"Authorization": f"Bearer {live_key}"}
    async with httpx.AsyncClient(base_url=live.url, headers=auth) as client:
        page = (await client.get(f"/conversations/{conversation.id}/messages")).json()
    assert [i["content"] for i in page["items"]] == ["one", "echo: one", "2", "echo: 2"]
    assert page["items"][0]["siblings"] == 1  # "one, edited"
    assert page["items"][2]["siblings"] == 1  # "two"
    # Another chat is another conversation; another key's chat with the same id is its own.
    await oai.chat.completions.create(model="agentchat", messages=edited, extra_headers=owui("chat-2"))
    async with sdk(live, await make_key(live.state, "other")) as other:
        await other.chat.completions.create(model="agentchat", messages=edited, extra_headers=owui("chat-1"))
    assert sorted(c.external_id or "" for c in await conversations(live.state)) == ["chat-1", "chat-1", "chat-2"]
    assert len(await messages(live.state, conversation.id)) == 8


async def test_the_end_user_is_recorded_and_filterable(oai: AsyncOpenAI, live: Live, live_key: str) -> None:
    ask: list[Any] = [{"role": "user", "content": "hello"}]
    await oai.chat.completions.create(model="agentchat", messages=ask, extra_headers=owui("c-1", "alice"))
    await oai.chat.completions.create(model="agentchat", messages=ask, user="bob")  # LibreChat sends `user`
    await oai.responses.create(model="agentchat", input="hello", user="bob")
    await oai.chat.completions.create(model="agentchat", messages=ask)
    auth = {"Authorization": f"Bearer {live_key}"}
    async with httpx.AsyncClient(base_url=live.url, headers=auth) as client:
        alice = (await client.get("/conversations", params={"end_user": "alice"})).json()["items"]
        bob = (await client.get("/conversations", params={"end_user": "bob", "limit": 1})).json()
        everyone = (await client.get("/conversations")).json()["items"]
        other = {"Authorization": f"Bearer {await make_key(live.state, 'other')}"}
        theirs = (await client.get("/conversations", params={"end_user": "alice"}, headers=other)).json()
    assert [(c["end_user"], c["external_id"]) for c in alice] == [("alice", "c-1")]
    assert [c["end_user"] for c in bob["items"]] == ["bob"]
    assert bob["next_cursor"] is not None  # two of bob's, one per page
    assert sorted(str(c["end_user"]) for c in everyone) == ["None", "alice", "bob", "bob"]
    assert theirs["items"] == []


async def test_task_calls_are_stateless_and_run_no_tools(
    oai: AsyncOpenAI, live: Live, llm_server: FakeLLMServer
) -> None:
    chat: list[Any] = [{"role": "user", "content": "hello"}]
    await oai.chat.completions.create(model="agentchat", messages=chat, extra_headers=owui("chat-1"))
    [conversation] = await conversations(live.state)
    before = len(llm_server.state.request_bodies())
    # Open WebUI's title and tag calls carry the chat's headers; the title's prompt asks for a tool.
    title = await oai.chat.completions.create(
        model="agentchat", messages=[{"role": "user", "content": TITLE_PROMPT}], extra_headers=owui("chat-1")
    )
    stream = await oai.chat.completions.create(
        model="agentchat",
        messages=[{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": TAGS_PROMPT}],
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=owui("chat-1"),
    )
    chunks = [chunk async for chunk in stream]
    # Any other client marks a call as a task with the header.
    marked = await oai.chat.completions.create(
        model="agentchat",
        messages=[{"role": "user", "content": "summarise: hi"}],
        extra_headers={"X-AgentChat-Task": "1"},
    )
    # The model asked for a tool it was not offered (the fake obliges the prompt): nothing ran.
    assert title.choices[0].message.content == "Let me use calculator."
    assert title.choices[0].message.tool_calls is None
    assert title.choices[0].finish_reason == "stop"
    assert title.usage is not None
    assert title.usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"echo: {TAGS_PROMPT}"
    assert chunks[-1].usage is not None
    assert marked.choices[0].message.content == "echo: summarise: hi"
    sent = llm_server.state.request_bodies()[before:]
    assert len(sent) == 3  # one model call each: no tool ran
    assert all("tools" not in body for body in sent)
    assert sent[1]["system"][0]["text"] == "Answer in JSON."  # the client's prompt only, not the agent's
    # Nothing stored: no conversation of their own, nothing added to the chat's.
    assert [c.id for c in await conversations(live.state)] == [conversation.id]
    assert len(await messages(live.state, conversation.id)) == 2


async def test_sampling_parameters_reach_the_model(oai: AsyncOpenAI, llm_server: FakeLLMServer) -> None:
    """LibreChat's parameters: the provider's (Anthropic here) are sent within its ranges, the rest
    left out, and none of them is ever a 400."""
    ask: list[Any] = [{"role": "user", "content": "hello"}]
    await oai.chat.completions.create(
        model="agentchat",
        messages=ask,
        temperature=0.3,
        top_p=0.9,
        stop=["END", " "],
        frequency_penalty=0.5,
        presence_penalty=0.1,
        seed=7,
        user="librechat-user",
        logit_bias={"50256": -100},
        extra_body={"top_k": 40, "reasoning_effort": "low", "repetition_penalty": 1.1},
    )
    sent = llm_server.state.request_bodies()[-1]
    assert (sent["temperature"], sent["stop_sequences"]) == (0.3, ["END"])
    # Recent Claude models refuse temperature with top_p: temperature wins. No penalties, no seed.
    for absent in ("top_p", "frequency_penalty", "presence_penalty", "seed", "logit_bias", "top_k"):
        assert absent not in sent, absent
    await oai.chat.completions.create(model="agentchat", messages=ask, temperature=1.8)
    assert llm_server.state.request_bodies()[-1]["temperature"] == 1.0  # OpenAI's 0-2 into Anthropic's 0-1
    await oai.chat.completions.create(model="agentchat", messages=ask, top_p=0.5, stop="STOP")
    sent = llm_server.state.request_bodies()[-1]
    assert (sent["top_p"], sent["stop_sequences"], "temperature" in sent) == (0.5, ["STOP"], False)
    await oai.chat.completions.create(
        model="agentchat", messages=ask, extra_body={"temperature": "warm", "stop": 3, "seed": "x"}
    )
    sent = llm_server.state.request_bodies()[-1]
    assert not {"temperature", "top_p", "stop_sequences"} & set(sent)
    await oai.responses.create(model="agentchat", input="hello", temperature=0.2)
    assert llm_server.state.request_bodies()[-1]["temperature"] == 0.2
