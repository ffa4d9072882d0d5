"""An agent with `provider_files`: attached images and PDFs go to Anthropic's Files API once and are
named by their file id in every call (the fake checks the beta header, the ids and their types)."""

from __future__ import annotations

from typing import Any

import httpx

from app.core.config import Settings
from testkit.fake_llm import FakeLLMServer
from tests.files import samples
from tests.fixtures.app import make_key, running_app


async def upload(client: httpx.AsyncClient, auth: dict[str, str], data: bytes, name: str) -> str:
    r = await client.post("/files", files={"file": (name, data)}, headers=auth)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def user_blocks(llm_server: FakeLLMServer, index: int) -> list[dict[str, Any]]:
    sent = llm_server.state.request_bodies()[-1]
    return list([m for m in sent["messages"] if m["role"] == "user"][index]["content"])


async def test_images_and_pdfs_are_uploaded_once_and_named_by_id(settings: Settings, llm_server: FakeLLMServer) -> None:
    uploaded: dict[str, tuple[str, str, bytes]] = llm_server.app.state.files
    uploaded.clear()
    async with running_app(settings.model_copy(update={"agent_provider_files": True})) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        image, document = samples.png(32, 32), samples.pdf(1)
        ids = [
            await upload(client, auth, image, "a.png"),
            await upload(client, auth, document, "b.pdf"),
            await upload(client, auth, b"plain words\n", "c.txt"),
        ]
        first = await client.post("/chat", json={"message": "read", "attachments": ids}, headers=auth)
        assert first.status_code == 200, first.text
        blocks = user_blocks(llm_server, -1)
        assert [b["type"] for b in blocks] == ["image", "document", "text", "text"]
        assert blocks[0]["source"]["type"] == "file"
        assert blocks[1] == {"type": "document", "source": blocks[1]["source"], "title": "b.pdf"}
        assert "plain words" in blocks[2]["text"]  # text stays text
        by_id = {file_id: content for file_id, (_, _, content) in uploaded.items()}
        assert by_id[blocks[0]["source"]["file_id"]] == image
        assert by_id[blocks[1]["source"]["file_id"]] == document

        # The next turn (its history holds them) and another conversation: no new upload.
        cid = first.json()["conversation_id"]
        again = await client.post("/chat", json={"message": "more", "conversation_id": cid}, headers=auth)
        assert again.status_code == 200, again.text
        assert user_blocks(llm_server, 0)[0]["source"] == blocks[0]["source"]
        other = await client.post("/chat", json={"message": "again", "attachments": ids[:1]}, headers=auth)
        assert other.status_code == 200, other.text
        assert len(uploaded) == 2
