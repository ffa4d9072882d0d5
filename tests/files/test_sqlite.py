"""Files on the embedded default: SQLite (no Redis, the offline demo), the bytes in the database."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.core.config import Settings
from tests.files import samples
from tests.fixtures.app import make_key, running_app
from tests.fixtures.database import run_migrations


async def test_upload_download_attach_and_delete_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/files.db"
    await asyncio.to_thread(run_migrations, url)
    settings = Settings(database_url=url, llm_provider="offline", log_format="json")
    async with running_app(settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        image = samples.png(640, 480)
        first = (await client.post("/files", files={"file": ("a.png", image)}, headers=auth)).json()
        again = (await client.post("/files", files={"file": ("b.png", image)}, headers=auth)).json()
        big = ("x" * 99 + "\n").encode() * 30_000  # 3 MB: several chunks back
        text = (await client.post("/files", files={"file": ("big.txt", big)}, headers=auth)).json()
        assert (await client.get(f"/files/{first['id']}/content", headers=auth)).content == image
        assert (await client.get(f"/files/{text['id']}/content", headers=auth)).content == big
        r = await client.post("/chat", json={"message": "what is it?", "attachments": [first["id"]]}, headers=auth)
        assert r.status_code == 200, r.text
        assert "an image, PNG, 640×480" in r.json()["message"]["content"]
        cid = r.json()["conversation_id"]
        items = (await client.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
        assert [a["id"] for a in items[0]["attachments"]] == [first["id"]]
        assert (await client.delete(f"/files/{first['id']}", headers=auth)).status_code == 204
        assert (await client.get(f"/files/{again['id']}/content", headers=auth)).content == image


async def test_concurrent_uploads_keep_to_the_quota_on_sqlite(tmp_path: Path) -> None:
    # SQLite's one writer: each upload takes its lock before reading the quota's sum, so none of
    # them reads it stale (nor fails on a snapshot another upload's commit made old).
    url = f"sqlite+aiosqlite:///{tmp_path}/files.db"
    await asyncio.to_thread(run_migrations, url)
    images = [samples.png(600 + n, 400) for n in range(4)]
    quota = sum(sorted(len(i) for i in images)[-2:])
    settings = Settings(database_url=url, llm_provider="offline", log_format="json", file_storage_quota_bytes=quota)
    async with running_app(settings) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        sent = (client.post("/files", files={"file": (f"{n}.png", i)}, headers=auth) for n, i in enumerate(images))
        results = await asyncio.gather(*sent)
        assert sorted(r.status_code for r in results) == [201, 201, 413, 413], [r.text for r in results]
