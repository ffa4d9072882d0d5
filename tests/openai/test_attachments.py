"""Files through /v1, with the official SDK: Chat Completions' image_url (data URLs) and file parts,
Responses' input_image and input_file; inline data becomes a stored file; the fake model checks the
blocks it gets; another key's file, a remote URL with fetching off, a private address, bad data: 400s."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError
from sqlalchemy import select

from app.core.config import Settings
from app.main import create_app
from app.models import Message
from testkit.fake_llm import FakeLLMServer
from tests.files import samples
from tests.fixtures.app import make_key
from tests.helpers import Live, live_server
from tests.openai.conftest import message_id, messages, sdk


def data_url(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


async def upload(live: Live, key: str, data: bytes, name: str) -> str:
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {key}"}) as client:
        r = await client.post("/files", files={"file": (name, data, "application/octet-stream")})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def files_of(live: Live, key: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {key}"}) as client:
        items: list[dict[str, Any]] = (await client.get("/files")).json()["items"]
    return items


def last_user_blocks(llm_server: FakeLLMServer, index: int = -1) -> list[dict[str, Any]]:
    sent = llm_server.state.request_bodies()[-1]
    return list([m for m in sent["messages"] if m["role"] == "user"][index]["content"])


async def test_chat_completions_image_url_and_file_parts(
    oai: AsyncOpenAI, live: Live, live_key: str, llm_server: FakeLLMServer
) -> None:
    image, document = samples.png(64, 32), samples.pdf(2)
    file_id = await upload(live, live_key, document, "report.pdf")
    user_parts: Any = [
        {"type": "text", "text": "Compare them."},
        {"type": "image_url", "image_url": {"url": data_url("image/png", image)}},
        {"type": "file", "file": {"file_id": file_id}},
    ]
    first = await oai.chat.completions.create(model="agentchat", messages=[{"role": "user", "content": user_parts}])
    blocks = last_user_blocks(llm_server)
    assert [b["type"] for b in blocks] == ["image", "document", "text"]
    assert blocks[0]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(image).decode(),
    }
    assert base64.b64decode(blocks[1]["source"]["data"]) == document
    assert blocks[2]["text"] == "Compare them."
    # The inline image is now a file of the caller's; the turn stores references to both.
    stored = {f["media_type"]: f for f in await files_of(live, live_key)}
    assert set(stored) == {"image/png", "application/pdf"}
    assert stored["image/png"]["width"] == 64
    rows = await messages(live.state, (await _conversation_of(live, first.id)))
    assert [b["type"] for b in rows[0].content] == ["attachment", "attachment", "text"]
    assert rows[0].content[0]["file_id"] == stored["image/png"]["id"]

    # The chat goes on with its history resent (the same data URL): one conversation, no new file.
    answer = first.choices[0].message.content or ""
    second = await oai.chat.completions.create(
        model="agentchat",
        messages=[
            {"role": "user", "content": user_parts},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And the second page?"},
        ],
    )
    assert await _conversation_of(live, second.id) == await _conversation_of(live, first.id)
    assert len(await files_of(live, live_key)) == 2
    assert [b["type"] for b in last_user_blocks(llm_server, 0)] == ["image", "document", "text"]


async def _conversation_of(live: Live, openai_id: str) -> uuid.UUID:
    async with live.state.sessions() as session:
        found = await session.execute(select(Message.conversation_id).where(Message.id == message_id(openai_id)))
        return found.scalar_one()


async def test_responses_input_image_and_input_file(
    oai: AsyncOpenAI, live: Live, live_key: str, llm_server: FakeLLMServer
) -> None:
    image, document, text = samples.gif(), samples.pdf(1), b"alpha,beta\n"
    file_id = await upload(live, live_key, text, "sheet.csv")
    response = await oai.responses.create(
        model="agentchat",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_image", "image_url": data_url("image/gif", image), "detail": "auto"},
                    {"type": "input_file", "filename": "doc.pdf", "file_data": data_url("application/pdf", document)},
                    {"type": "input_file", "file_id": file_id},
                    {"type": "input_text", "text": "Read all three."},
                ],
            }
        ],
    )
    assert response.status == "completed"
    blocks = last_user_blocks(llm_server)
    assert [b["type"] for b in blocks] == ["image", "document", "text", "text"]
    assert blocks[0]["source"]["media_type"] == "image/gif"
    assert blocks[1]["title"] == "doc.pdf"
    assert base64.b64decode(blocks[1]["source"]["data"]) == document
    assert "alpha,beta" in blocks[2]["text"]
    assert blocks[3]["text"] == "Read all three."
    names = {f["filename"] for f in await files_of(live, live_key)}
    assert names == {"sheet.csv", "doc.pdf", "file.gif"}


async def test_refused_parts_are_400s_naming_the_part(
    oai: AsyncOpenAI, live: Live, live_key: str, llm_server: FakeLLMServer
) -> None:
    theirs = await upload(live, await make_key(live.state, "other"), samples.png(), "theirs.png")
    cases: list[tuple[Any, str]] = [
        # Attachment parts are the service's own making, never a client's (a forged one names any hash).
        ({"type": "attachment", "file_id": theirs, "sha256": "0" * 64}, "messages[0].content[0].type"),
        ({"type": "file", "file": {"file_id": theirs}}, "messages[0].content[0].file.file_id"),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[0].file.file_id"),
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
            "messages[0].content[0].image_url.url",
        ),
    ]
    for part, param in cases:
        with pytest.raises(BadRequestError) as caught:
            await oai.chat.completions.create(
                model="agentchat", messages=[{"role": "user", "content": [part, {"type": "text", "text": "hi"}]}]
            )
        assert caught.value.param == param, caught.value.body
    # Bytes that are no accepted type: the service's 415, as OpenAI's error shape.
    with pytest.raises(Exception) as refused:  # noqa: PT011 - the SDK's class for a 415 is APIStatusError
        await oai.responses.create(
            model="agentchat",
            input=[
                {
                    "role": "user",
                    "content": [{"type": "input_file", "file_data": data_url("image/png", samples.EXECUTABLE)}],
                }
            ],
        )
    assert getattr(refused.value, "status_code", None) == 415
    assert llm_server.state.request_bodies() == []


async def test_remote_urls_go_through_the_ssrf_safe_fetcher(settings: Settings, llm_server: FakeLLMServer) -> None:
    # Listed, so its port is allowed: still refused for its address.
    on = settings.model_copy(update={"agent_tools": "calculator,fetch_url", "fetch_url_allowed_hosts": "127.0.0.1"})
    async with live_server(create_app(on)) as live:
        async with sdk(live, await make_key(live.state)) as client:
            # This server's own address is not public: refused before any connection is made.
            url = f"{live.url}/files/x.png"
            with pytest.raises(BadRequestError) as caught:
                await client.chat.completions.create(
                    model="agentchat",
                    messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
                )
            assert caught.value.param == "messages[0].content[0].image_url.url"
            assert "non-public address" in caught.value.message
    assert llm_server.state.request_bodies() == []


async def test_inline_parts_and_uploads_of_one_key_at_once_all_go_through(
    oai: AsyncOpenAI, live: Live, live_key: str
) -> None:
    # A request storing several parts holds the key's file lock until its transaction ends; uploads
    # of the same key meanwhile wait their turn before the lock, not on it while holding the turn.
    async def chat(n: int) -> str:
        parts: Any = [
            {"type": "text", "text": f"two images, {n}"},
            {"type": "image_url", "image_url": {"url": data_url("image/png", samples.png(200 + n, 20))}},
            {"type": "image_url", "image_url": {"url": data_url("image/png", samples.png(300 + n, 20))}},
        ]
        done = await oai.chat.completions.create(model="agentchat", messages=[{"role": "user", "content": parts}])
        return str(done.choices[0].message.content)

    async def put(n: int) -> str:
        return await upload(live, live_key, samples.png(400 + n, 20), f"{n}.png")

    done = await asyncio.wait_for(asyncio.gather(*(f(n) for n in range(6) for f in (chat, put))), timeout=60)
    assert len(done) == 12
    assert len(await files_of(live, live_key)) == 18
