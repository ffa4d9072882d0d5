"""Files attached to /chat turns: references stored on the user's message, the content sent to each
provider the way it expects (checked by the fake model), refused before any call where it cannot go."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.core.config import Settings
from app.models import Conversation, Message
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from tests.files import samples
from tests.fixtures.app import make_key, running_app


async def upload(client: httpx.AsyncClient, auth: dict[str, str], data: bytes, name: str) -> dict[str, Any]:
    r = await client.post("/files", files={"file": (name, data, "application/octet-stream")}, headers=auth)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def user_blocks(body: dict[str, Any], index: int = -1) -> list[dict[str, Any]]:
    users = [m for m in body["messages"] if m["role"] == "user"]
    content = users[index]["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


async def count(state: Resources, model: type[Conversation] | type[Message]) -> int:
    async with state.sessions() as session:
        return int((await session.execute(select(func.count()).select_from(model))).scalar_one())


async def test_chat_sends_images_pdfs_and_text_as_anthropic_blocks(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources, llm_server: FakeLLMServer
) -> None:
    image, document, text = samples.png(640, 480), samples.pdf(2), b"col,val\nx,1\n"
    ids = [
        (await upload(client, auth, image, "shot.png"))["id"],
        (await upload(client, auth, document, "paper.pdf"))["id"],
        (await upload(client, auth, text, "data.csv"))["id"],
    ]
    r = await client.post("/chat", json={"message": "What is in these?", "attachments": ids}, headers=auth)
    assert r.status_code == 200, r.text
    sent = llm_server.state.request_bodies()[-1]
    blocks = user_blocks(sent)
    assert [b["type"] for b in blocks] == ["image", "document", "text", "text"]
    assert blocks[0]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": base64.b64encode(image).decode(),
    }
    assert blocks[1]["source"]["media_type"] == "application/pdf"
    assert base64.b64decode(blocks[1]["source"]["data"]) == document
    assert blocks[1]["title"] == "paper.pdf"
    assert "data.csv" in blocks[2]["text"]
    assert "col,val\nx,1" in blocks[2]["text"]
    assert blocks[3]["text"] == "What is in these?"

    # Stored as references (no bytes); listed by the history API.
    cid = r.json()["conversation_id"]
    async with state.sessions() as session:
        stored = (
            await session.execute(
                select(Message.content).where(Message.conversation_id == uuid.UUID(cid), Message.role == "user")
            )
        ).scalar_one()
    assert [b["type"] for b in stored] == ["attachment", "attachment", "attachment", "text"]
    assert [b["file_id"] for b in stored[:3]] == ids
    assert not any("data" in b or "source" in b for b in stored)
    items = (await client.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
    assert items[0]["content"] == "What is in these?"
    listed = items[0]["attachments"]
    assert [a["id"] for a in listed] == ids
    assert listed[0] | {"id": None} == {
        "id": None,
        "filename": "shot.png",
        "media_type": "image/png",
        "bytes": len(image),
        "width": 640,
        "height": 480,
        "pages": None,
    }
    assert listed[1]["pages"] == 2
    assert items[1]["attachments"] == []

    # The next turn's history sends the image again (the model keeps seeing it).
    again = await client.post("/chat", json={"message": "And now?", "conversation_id": cid}, headers=auth)
    assert again.status_code == 200, again.text
    first_turn = user_blocks(llm_server.state.request_bodies()[-1], 0)
    assert [b["type"] for b in first_turn] == ["image", "document", "text", "text"]
    assert first_turn[0]["source"]["data"] == base64.b64encode(image).decode()


async def test_streamed_turn_with_an_attachment(
    client: httpx.AsyncClient, auth: dict[str, str], llm_server: FakeLLMServer
) -> None:
    file_id = (await upload(client, auth, samples.jpeg(), "p.jpg"))["id"]
    body = {"message": "look", "attachments": [file_id], "stream": True}
    async with client.stream("POST", "/chat", json=body, headers=auth) as r:
        assert r.status_code == 200
        text = "".join([chunk async for chunk in r.aiter_text()])
    assert "event: end" in text
    blocks = user_blocks(llm_server.state.request_bodies()[-1])
    assert blocks[0]["type"] == "image"
    assert blocks[0]["source"]["media_type"] == "image/jpeg"


async def test_another_keys_file_cannot_be_attached(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources, llm_server: FakeLLMServer
) -> None:
    theirs = {"Authorization": f"Bearer {await make_key(state, 'other')}"}
    file_id = (await upload(client, theirs, samples.png(), "theirs.png"))["id"]
    for ids in ([file_id], [str(uuid.uuid4())]):
        r = await client.post("/chat", json={"message": "hi", "attachments": ids}, headers=auth)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["type"] == "not_found"
        assert ids[0] in r.json()["error"]["message"]
    assert await count(state, Conversation) == 0
    assert llm_server.state.request_bodies() == []


async def test_too_many_attachments(settings: Settings) -> None:
    async with running_app(settings.model_copy(update={"chat_max_attachments": 1})) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        a = (await upload(client, auth, b"one\n", "a.txt"))["id"]
        b = (await upload(client, auth, b"two\n", "b.txt"))["id"]
        r = await client.post("/chat", json={"message": "hi", "attachments": [a, b]}, headers=auth)
        assert r.status_code == 422
        assert r.json()["error"]["type"] == "too_many_attachments"
        assert (await client.post("/chat", json={"message": "hi", "attachments": [a]}, headers=auth)).status_code == 200


async def test_a_text_only_model_refuses_images_before_any_call(settings: Settings, llm_server: FakeLLMServer) -> None:
    async with running_app(settings.model_copy(update={"file_text_only_models": "claude-te*"})) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        image = (await upload(client, auth, samples.png(), "a.png"))["id"]
        r = await client.post("/chat", json={"message": "see", "attachments": [image]}, headers=auth)
        assert r.status_code == 422
        assert r.json()["error"]["type"] == "attachments_unsupported"
        assert "claude-test" in r.json()["error"]["message"]
        assert llm_server.state.request_bodies() == []
        assert await count(state, Message) == 0
        # Text files are text to every model.
        text = (await upload(client, auth, b"hello file\n", "a.txt"))["id"]
        ok = await client.post("/chat", json={"message": "read", "attachments": [text]}, headers=auth)
        assert ok.status_code == 200, ok.text
        assert "hello file" in user_blocks(llm_server.state.request_bodies()[-1])[0]["text"]


async def test_openai_compatible_provider_gets_image_url_and_file_parts(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    openai = settings.model_copy(
        update={"llm_provider": "openai", "openai_base_url": f"{llm_server.url}/v1", "llm_model": "gpt-test"}
    )
    async with running_app(openai) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        image, document = samples.webp(), samples.pdf(1)
        ids = [(await upload(client, auth, image, "w.webp"))["id"]]
        ids.append((await upload(client, auth, document, "d.pdf"))["id"])
        r = await client.post("/chat", json={"message": "describe", "attachments": ids}, headers=auth)
        assert r.status_code == 200, r.text
        sent = llm_server.state.request_bodies()[-1]
        parts = [m for m in sent["messages"] if m["role"] == "user"][-1]["content"]
        assert parts[0] == {
            "type": "image_url",
            "image_url": {"url": "data:image/webp;base64," + base64.b64encode(image).decode()},
        }
        assert parts[1]["type"] == "file"
        assert parts[1]["file"]["filename"] == "d.pdf"
        assert parts[1]["file"]["file_data"] == "data:application/pdf;base64," + base64.b64encode(document).decode()
        assert parts[2] == {"type": "text", "text": "describe"}


async def test_offline_demo_says_what_it_received(settings: Settings) -> None:
    offline = settings.model_copy(update={"llm_provider": "offline", "anthropic_api_key": None})
    async with running_app(offline) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        ids = [(await upload(client, auth, samples.png(640, 480), "a.png"))["id"]]
        ids.append((await upload(client, auth, samples.pdf(3), "b.pdf"))["id"])
        r = await client.post("/chat", json={"message": "what is this?", "attachments": ids}, headers=auth)
        assert r.status_code == 200, r.text
        answer = r.json()["message"]["content"]
        assert "an image, PNG, 640×480" in answer
        assert "a PDF document, “b.pdf”, 3 pages" in answer


async def test_deleted_files_and_conversations(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources, llm_server: FakeLLMServer
) -> None:
    file_id = (await upload(client, auth, samples.gif(), "g.gif"))["id"]
    first = (await client.post("/chat", json={"message": "one", "attachments": [file_id]}, headers=auth)).json()
    second = (await client.post("/chat", json={"message": "two", "attachments": [file_id]}, headers=auth)).json()
    # Deleting a conversation leaves the file its turns attached: another conversation still uses it.
    assert (await client.delete(f"/conversations/{first['conversation_id']}", headers=auth)).status_code == 204
    assert (await client.get(f"/files/{file_id}/content", headers=auth)).content == samples.gif()
    # A deleted file: the history says so instead of sending it.
    assert (await client.delete(f"/files/{file_id}", headers=auth)).status_code == 204
    cid = second["conversation_id"]
    r = await client.post("/chat", json={"message": "three", "conversation_id": cid}, headers=auth)
    assert r.status_code == 200, r.text
    earlier = user_blocks(llm_server.state.request_bodies()[-1], 0)
    assert earlier[0] == {"type": "text", "text": "[Attached g.gif (image/gif): the file has since been deleted.]"}


async def test_nothing_of_a_files_bytes_is_logged(
    client: httpx.AsyncClient, auth: dict[str, str], capfd: pytest.CaptureFixture[str]
) -> None:
    secret = b"TOP-SECRET-CONTENT-1234\n"
    file_id = (await upload(client, auth, secret, "s.txt"))["id"]
    await client.post("/chat", json={"message": "read it", "attachments": [file_id]}, headers=auth)
    await client.get(f"/files/{file_id}/content", headers=auth)
    out, err = capfd.readouterr()
    assert "files.stored" in out + err  # the logs were captured
    for needle in (secret.decode().strip(), base64.b64encode(secret).decode()):
        assert needle not in out + err
