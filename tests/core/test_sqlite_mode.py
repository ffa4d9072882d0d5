"""The embedded default: SQLite, no Redis, and the clearly labelled offline model."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.core.config import Settings
from app.llm.offline import OFFLINE_NOTICE
from tests.fixtures.app import make_key, running_app
from tests.fixtures.database import run_migrations
from tests.helpers import sse_events


async def test_embedded_mode_end_to_end(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/agentchat.db"
    await asyncio.to_thread(run_migrations, url)
    settings = Settings(database_url=url, log_format="json")
    assert settings.provider == "offline"
    assert settings.redis_url is None
    async with running_app(settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        assert (await client.get("/readyz")).json()["checks"] == {"database": "ok"}
        r = await client.post("/chat", json={"message": "hi there"}, headers=auth)
        assert r.status_code == 200, r.text
        answer = r.json()["message"]["content"]
        assert answer.startswith(OFFLINE_NOTICE)
        assert "hi there" in answer
        cid = r.json()["conversation_id"]
        r = await client.post("/chat", json={"message": "more", "conversation_id": cid, "stream": True}, headers=auth)
        events = sse_events(r.text)
        assert events[0]["event"] == "start"
        assert events[-1]["event"] == "end"
        items = (await client.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
        assert [i["status"] for i in items] == ["complete"] * 4
        assert items[0]["created_at"].endswith("Z") or "+00:00" in items[0]["created_at"]
        page = (await client.get("/conversations", params={"limit": 1}, headers=auth)).json()
        assert page["items"][0]["id"] == cid
        assert (await client.delete(f"/conversations/{cid}", headers=auth)).status_code == 204
