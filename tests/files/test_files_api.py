"""/files: upload (types from the bytes, caps, quota), list, read, download, delete; owner-scoped."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import httpx
import pytest
from sqlalchemy import func, select

from app.core.config import Settings
from app.files.service import owner_gate
from app.models import FileChunk, StoredFile
from app.state import Resources
from tests.files import samples
from tests.fixtures.app import make_key, owner_of, running_app


async def upload(
    client: httpx.AsyncClient, auth: dict[str, str], data: bytes, name: str, content_type: str = "application/x-any"
) -> httpx.Response:
    return await client.post("/files", files={"file": (name, data, content_type)}, headers=auth)


@pytest.mark.parametrize(
    ("name", "data", "media_type", "extra"),
    [
        ("shot.png", samples.png(640, 480), "image/png", {"width": 640, "height": 480}),
        ("photo.jpg", samples.jpeg(320, 200), "image/jpeg", {"width": 320, "height": 200}),
        ("anim.gif", samples.gif(16, 9), "image/gif", {"width": 16, "height": 9}),
        ("pic.webp", samples.webp(100, 50), "image/webp", {"width": 100, "height": 50}),
        ("paper.pdf", samples.pdf(3), "application/pdf", {"pages": 3}),
        ("notes.txt", "plain text, é\n".encode(), "text/plain", {}),
        ("README.md", b"# Title\n\n* item\n", "text/markdown", {}),
        ("table.csv", b"a,b\n1,2\n", "text/csv", {}),
    ],
)
async def test_each_accepted_type_is_read_from_its_bytes(
    client: httpx.AsyncClient, auth: dict[str, str], name: str, data: bytes, media_type: str, extra: dict[str, int]
) -> None:
    # The client's header lies (and the name says nothing of binary types): the bytes decide.
    r = await upload(client, auth, data, name, "application/octet-stream")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["media_type"] == media_type
    assert body["filename"] == name
    assert body["bytes"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    for key, value in extra.items():
        assert body[key] == value
    assert set(body) >= {"id", "filename", "media_type", "bytes", "sha256", "created_at"}

    got = await client.get(f"/files/{body['id']}", headers=auth)
    assert got.status_code == 200
    assert got.json() == body
    content = await client.get(f"/files/{body['id']}/content", headers=auth)
    assert content.status_code == 200
    assert content.content == data
    assert content.headers["content-type"].split(";")[0] == media_type
    assert content.headers["content-disposition"].startswith("attachment;")
    assert content.headers["x-content-type-options"] == "nosniff"


async def test_a_binary_named_like_an_image_is_refused(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    for data, name in ((samples.EXECUTABLE, "cat.png"), (b"\x00\x01\x02binary", "data.txt"), (b"", "empty.txt")):
        r = await upload(client, auth, data, name, "image/png")
        assert r.status_code == 415, r.text
        assert r.json()["error"]["type"] == "unsupported_media_type"
    # HTML is text: stored as text/plain, and served as a download, never rendered.
    html = await upload(client, auth, b"<html><script>alert(1)</script></html>", "page.html", "text/html")
    assert html.status_code == 201
    assert html.json()["media_type"] == "text/plain"
    served = await client.get(f"/files/{html.json()['id']}/content", headers=auth)
    assert served.headers["content-type"] == "text/plain; charset=utf-8"
    assert served.headers["content-disposition"].startswith("attachment;")
    assert "sandbox" in served.headers["content-security-policy"]
    assert (await client.get("/files", headers=auth)).json()["items"] == [html.json()]


async def test_caps_size_dimensions_and_pages(settings: Settings) -> None:
    capped = replace_settings(settings, file_max_bytes=4096, file_pdf_max_pages=2)
    async with running_app(capped) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        big = await upload(client, auth, b"a" * 5000, "big.txt")
        assert big.status_code == 413
        assert big.json()["error"]["type"] == "payload_too_large"
        # Far past the cap: refused by the body limit before the app reads it.
        huge = await upload(client, auth, b"a" * 200_000, "huge.txt")
        assert huge.status_code == 413
        # A header claiming 100,000 × 100,000 pixels: refused from the header, nothing decoded.
        claims = await upload(client, auth, samples.png(100_000, 100_000, pixels=False), "bomb.png")
        assert claims.status_code == 422, claims.text
        assert claims.json()["error"]["type"] == "image_too_large"
        assert "100000×100000" in claims.json()["error"]["message"]
        pages = await upload(client, auth, samples.pdf(3), "long.pdf")
        assert pages.status_code == 422
        assert pages.json()["error"]["type"] == "too_many_pages"
        assert (await upload(client, auth, samples.pdf(2), "ok.pdf")).status_code == 201
        async with state.sessions() as session:
            assert (await session.execute(select(func.count()).select_from(StoredFile))).scalar_one() == 1


def replace_settings(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update=changes)


async def test_quota_counts_each_content_once(settings: Settings) -> None:
    async with running_app(replace_settings(settings, file_storage_quota_bytes=3000)) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        first = await upload(client, auth, samples.png(640, 480), "a.png")  # 1,700 bytes
        assert first.status_code == 201
        # The same bytes again: stored once, so within the quota, and a file of its own.
        again = await upload(client, auth, samples.png(640, 480), "b.png")
        assert again.status_code == 201
        assert again.json()["id"] != first.json()["id"]
        over = await upload(client, auth, samples.png(600, 400), "c.png")
        assert over.status_code == 413
        assert over.json()["error"]["type"] == "quota_exceeded"
        async with state.sessions() as session:
            assert (await session.execute(select(func.count()).select_from(FileChunk))).scalar_one() == 1
        # Another key has its own quota.
        other = {"Authorization": f"Bearer {await make_key(state)}"}
        assert (await upload(client, other, samples.png(600, 400), "c.png")).status_code == 201


async def test_concurrent_uploads_cannot_overrun_the_quota_together(settings: Settings) -> None:
    # Six different images at once, room for two: each upload must see the others' bytes. Checked
    # then written without the owner's lock, every one of them read the quota as free.
    images = [samples.png(600 + n, 400) for n in range(6)]
    quota = sum(sorted(len(i) for i in images)[-2:])
    async with running_app(replace_settings(settings, file_storage_quota_bytes=quota)) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        results = await asyncio.gather(*(upload(client, auth, image, f"{n}.png") for n, image in enumerate(images)))
        assert sorted(r.status_code for r in results) == [201, 201, 413, 413, 413, 413]
        assert all(r.json()["error"]["type"] == "quota_exceeded" for r in results if r.status_code == 413)
        async with state.sessions() as session:
            stored = (await session.execute(select(func.sum(StoredFile.bytes)))).scalar_one()
        assert stored <= quota


async def test_uploads_waiting_for_their_keys_turn_hold_no_connection(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources
) -> None:
    # One key's uploads go in turn; those waiting must not sit on pool connections (a key sending
    # as many files at once as the pool holds would starve every other request).
    owner = await owner_of(state, auth["Authorization"].removeprefix("Bearer "))
    pool = state.engine.sync_engine.pool
    async with owner_gate(owner):
        sent = [asyncio.create_task(upload(client, auth, samples.png(100 + n, 50), f"{n}.png")) for n in range(4)]
        await asyncio.sleep(0.5)  # long enough to inspect them and reach the owner's turn
        assert not any(task.done() for task in sent)
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert [r.status_code for r in await asyncio.gather(*sent)] == [201] * 4


async def test_an_upload_beside_a_delete_of_the_same_bytes_keeps_them(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources
) -> None:
    # The delete removes the last file with these bytes, the upload counted on them being stored:
    # one of the two goes first, and the bytes stay with the file that is left.
    image = samples.png(320, 240)
    for attempt in range(5):
        first = (await upload(client, auth, image, f"a{attempt}.png")).json()
        deleted, again = await asyncio.gather(
            client.delete(f"/files/{first['id']}", headers=auth), upload(client, auth, image, f"b{attempt}.png")
        )
        assert deleted.status_code == 204
        assert again.status_code == 201
        content = await client.get(f"/files/{again.json()['id']}/content", headers=auth)
        assert content.status_code == 200
        assert content.content == image
        assert (await client.delete(f"/files/{again.json()['id']}", headers=auth)).status_code == 204


async def test_another_key_sees_none_of_it(client: httpx.AsyncClient, auth: dict[str, str], state: Resources) -> None:
    file_id = (await upload(client, auth, samples.png(), "mine.png")).json()["id"]
    other = {"Authorization": f"Bearer {await make_key(state)}"}
    for path in (f"/files/{file_id}", f"/files/{file_id}/content"):
        r = await client.get(path, headers=other)
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "not_found"
    assert (await client.delete(f"/files/{file_id}", headers=other)).status_code == 404
    assert (await client.get("/files", headers=other)).json() == {"items": [], "next_cursor": None}
    assert (await client.get(f"/files/{file_id}", headers=auth)).status_code == 200
    assert (await client.get("/files", headers={})).status_code == 401


async def test_list_pages_newest_first(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    ids = [(await upload(client, auth, f"file {n}\n".encode(), f"{n}.txt")).json()["id"] for n in range(5)]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/files", params=params, headers=auth)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_delete_keeps_shared_bytes_until_the_last_file(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources
) -> None:
    data = samples.pdf(1)
    a = (await upload(client, auth, data, "a.pdf")).json()["id"]
    b = (await upload(client, auth, data, "b.pdf")).json()["id"]

    async def blobs() -> int:
        async with state.sessions() as session:
            return int((await session.execute(select(func.count()).select_from(FileChunk))).scalar_one())

    assert await blobs() == 1
    assert (await client.delete(f"/files/{a}", headers=auth)).status_code == 204
    assert (await client.get(f"/files/{a}", headers=auth)).status_code == 404
    assert (await client.get(f"/files/{b}/content", headers=auth)).content == data
    assert await blobs() == 1
    assert (await client.delete(f"/files/{b}", headers=auth)).status_code == 204
    assert await blobs() == 0
    assert (await client.delete(f"/files/{uuid.uuid4()}", headers=auth)).status_code == 404


async def test_large_file_streams_back_in_chunks(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources
) -> None:
    # Past one chunk (1 MiB): written as 1 MiB rows and read back one statement per row.
    data = ("line of text\n" * 200_000).encode()
    r = await upload(client, auth, data, "long.txt")
    assert r.status_code == 201, r.text
    async with state.sessions() as session:
        sizes = (await session.execute(select(func.length(FileChunk.data)).order_by(FileChunk.seq))).scalars().all()
    assert sizes == [1024 * 1024, 1024 * 1024, len(data) - 2 * 1024 * 1024]
    got = await client.get(f"/files/{r.json()['id']}/content", headers=auth)
    assert got.content == data
