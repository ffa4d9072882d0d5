"""The S3-compatible storage (FILE_STORAGE_URL=s3://bucket/prefix) against a real S3 HTTP server:
moto's server, started here on a loopback port and reached through aiobotocore as any S3 would be."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer
from openai import AsyncOpenAI, BadRequestError
from sqlalchemy import func, select

from app.core.config import Settings
from app.files.errors import QuotaExceeded
from app.files.service import record_file, stage_file
from app.files.storage import S3Storage
from app.main import create_app
from app.models import FileChunk, StoredFile
from testkit.fake_llm import FakeLLMServer
from testkit.net import free_port
from tests.files import samples
from tests.fixtures.app import make_key, owner_of, running_app
from tests.helpers import live_server
from tests.openai.test_attachments import data_url

BUCKET = "agentchat-files"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
async def s3(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The usual AWS variables pointing at the server, and an empty bucket."""
    for name, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    async with get_session().create_client("s3") as client:
        await client.create_bucket(Bucket=BUCKET)
        yield s3_server
        listed = await client.list_objects_v2(Bucket=BUCKET)
        for item in listed.get("Contents", []):
            await client.delete_object(Bucket=BUCKET, Key=item["Key"])
        await client.delete_bucket(Bucket=BUCKET)


async def keys_in_bucket() -> list[str]:
    async with get_session().create_client("s3") as client:
        listed = await client.list_objects_v2(Bucket=BUCKET)
        return [item["Key"] for item in listed.get("Contents", [])]


async def test_files_live_in_the_bucket(s3: str, settings: Settings, llm_server: FakeLLMServer) -> None:
    on_s3 = settings.model_copy(update={"file_storage_url": f"s3://{BUCKET}/uploads"})
    async with running_app(on_s3) as (_, state, client):
        key = await make_key(state)
        auth = {"Authorization": f"Bearer {key}"}
        image = samples.png(320, 240)
        first = (await client.post("/files", files={"file": ("a.png", image)}, headers=auth)).json()
        again = (await client.post("/files", files={"file": ("b.png", image)}, headers=auth)).json()
        # Stored once per owner and hash, under the prefix; nothing in the database's blobs.
        (stored,) = await keys_in_bucket()
        assert stored.startswith("uploads/")
        assert stored.endswith("/" + first["sha256"])
        async with state.sessions() as session:
            assert (await session.execute(select(func.count()).select_from(FileChunk))).scalar_one() == 0
        got = await client.get(f"/files/{first['id']}/content", headers=auth)
        assert got.content == image

        # Attached to a turn: the model gets the bytes read back from the bucket.
        r = await client.post("/chat", json={"message": "see", "attachments": [first["id"]]}, headers=auth)
        assert r.status_code == 200, r.text
        sent = llm_server.state.request_bodies()[-1]["messages"][-1]["content"][0]
        assert sent["source"]["data"] == base64.b64encode(image).decode()

        # Past one part (8 MiB): a multipart upload, streamed from the spooled file.
        big = b"0123456789abcdef\n" * (9 * 1024 * 1024 // 17)
        large = await client.post("/files", files={"file": ("big.txt", big)}, headers=auth)
        assert large.status_code == 201, large.text
        assert len(await keys_in_bucket()) == 2
        streamed = await client.get(f"/files/{large.json()['id']}/content", headers=auth)
        assert streamed.content == big

        # The object goes with the last file that has its bytes.
        assert (await client.delete(f"/files/{first['id']}", headers=auth)).status_code == 204
        assert len(await keys_in_bucket()) == 2
        assert (await client.delete(f"/files/{again['id']}", headers=auth)).status_code == 204
        assert len(await keys_in_bucket()) == 1


def test_a_bad_storage_url_stops_start_up() -> None:
    with pytest.raises(ValueError, match="FILE_STORAGE_URL"):
        Settings(file_storage_url="ftp://nope")


async def test_a_bucket_outage_is_a_503_and_a_paused_turn_keeps_its_decisions(
    s3: str, settings: Settings, llm_server: FakeLLMServer
) -> None:
    """The bucket gone (refused, unreachable): a turn that must read an attachment is a 503 with
    Retry-After, nothing half-done; a paused turn whose continuation cannot read its attachment gives
    its claim back, so the same decisions go through once the bucket answers again."""
    gated = settings.model_copy(update={"file_storage_url": f"s3://{BUCKET}/uploads", "agent_approval_tools": "calc*"})
    async with running_app(gated) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        image = (await client.post("/files", files={"file": ("a.png", samples.png(32, 32))}, headers=auth)).json()
        ask = {"message": '[[tool:calculator {"expression": "2+2"}]] see', "attachments": [image["id"]]}
        paused = (await client.post("/chat", json=ask, headers=auth)).json()
        assert paused["stop_reason"] == "awaiting_approval"
        cid = paused["conversation_id"]
        decision = {"decisions": [{"tool_use_id": paused["pending_approvals"][0]["tool_use_id"], "approve": True}]}

        async with get_session().create_client("s3") as s3_client:
            for key in await keys_in_bucket():
                await s3_client.delete_object(Bucket=BUCKET, Key=key)
            await s3_client.delete_bucket(Bucket=BUCKET)
            try:
                for _ in range(2):  # the claim was given back: the same decisions are not "decided meanwhile"
                    r = await client.post(f"/conversations/{cid}/approvals", json=decision, headers=auth)
                    assert r.status_code == 503, r.text
                    assert r.json()["error"]["type"] == "storage_unavailable"
                    assert r.headers["retry-after"] == "2"
                history = (await client.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
                assert history[-1]["status"] == "awaiting_approval"
                # A new turn that must read the image: its message kept, its answer recorded as failed.
                r = await client.post("/chat", json={"message": "look", "attachments": [image["id"]]}, headers=auth)
                assert r.status_code == 503, r.text
                assert r.json()["error"]["type"] == "storage_unavailable"
                [failed] = [
                    c for c in (await client.get("/conversations", headers=auth)).json()["items"] if c["id"] != cid
                ]
                items = (await client.get(f"/conversations/{failed['id']}/messages", headers=auth)).json()["items"]
                assert [(i["role"], i["status"]) for i in items] == [("user", "complete"), ("assistant", "error")]
                assert items[1]["error"]["type"] == "storage_unavailable"
            finally:
                await s3_client.create_bucket(Bucket=BUCKET)
        # The bucket is back (empty: the image's bytes are gone, which the model is told).
        r = await client.post(f"/conversations/{cid}/approvals", json=decision, headers=auth)
        assert r.status_code == 200, r.text
        assert r.json()["message"]["status"] == "complete"
        assert llm_server.state.rejections == []


async def test_an_upload_holds_no_connection_while_its_bytes_go_to_the_bucket(
    s3: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_s3 = settings.model_copy(update={"file_storage_url": f"s3://{BUCKET}/uploads"})
    held: list[int] = []
    put = S3Storage.put

    async def watched(self: S3Storage, *args: Any, **kwargs: Any) -> None:
        held.append(pool.checkedout())  # type: ignore[attr-defined]
        await put(self, *args, **kwargs)

    monkeypatch.setattr(S3Storage, "put", watched)
    async with running_app(on_s3) as (_, state, client):
        pool = state.engine.sync_engine.pool
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        r = await client.post("/files", files={"file": ("a.png", samples.png(320, 240))}, headers=auth)
        assert r.status_code == 201, r.text
    assert held == [0]


async def test_bytes_deleted_between_staging_and_recording_are_put_again(s3: str, settings: Settings) -> None:
    on_s3 = settings.model_copy(update={"file_storage_url": f"s3://{BUCKET}/uploads"})
    async with running_app(on_s3) as (_, state, client):
        key = await make_key(state)
        owner, image = await owner_of(state, key), samples.png(300, 200)
        staged = await stage_file(
            state.sessions, state.files, on_s3, owner_id=owner, source=io.BytesIO(image), filename="a.png"
        )
        assert staged.uploaded
        assert len(await keys_in_bucket()) == 1
        # As the delete of the owner's last file with these bytes does, after this upload staged them.
        await state.files.delete(owner, staged.found.sha256)
        assert await keys_in_bucket() == []
        async with state.sessions() as session, session.begin():
            row = await record_file(session, state.files, on_s3, owner_id=owner, staged=staged)
        got = await client.get(f"/files/{row.id}/content", headers={"Authorization": f"Bearer {key}"})
        assert got.status_code == 200
        assert got.content == image


async def test_a_staged_upload_refused_by_the_quota_leaves_nothing_in_the_bucket(s3: str, settings: Settings) -> None:
    images = [samples.png(300, 200), samples.png(301, 200)]
    quota = max(len(i) for i in images) + 10  # room for one of them
    on_s3 = settings.model_copy(
        update={"file_storage_url": f"s3://{BUCKET}/uploads", "file_storage_quota_bytes": quota}
    )
    async with running_app(on_s3) as (_, state, _client):
        owner = await owner_of(state, await make_key(state))
        # Both staged before either is recorded (concurrent uploads): each fit the quota alone.
        staged = [
            await stage_file(state.sessions, state.files, on_s3, owner_id=owner, source=io.BytesIO(i), filename="i.png")
            for i in images
        ]
        assert len(await keys_in_bucket()) == 2
        async with state.sessions() as session, session.begin():
            await record_file(session, state.files, on_s3, owner_id=owner, staged=staged[0])
        with pytest.raises(QuotaExceeded):
            async with state.sessions() as session, session.begin():
                await record_file(session, state.files, on_s3, owner_id=owner, staged=staged[1])
        (left,) = await keys_in_bucket()
        assert left.endswith(staged[0].found.sha256)


async def test_a_v1_request_that_fails_takes_back_what_it_put_in_the_bucket(
    s3: str, settings: Settings, llm_server: FakeLLMServer
) -> None:
    on_s3 = settings.model_copy(update={"file_storage_url": f"s3://{BUCKET}/uploads"})
    async with live_server(create_app(on_s3)) as live:
        key = await make_key(live.state)
        async with AsyncOpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0) as oai:
            image = data_url("image/png", samples.png(120, 80))
            missing = str(uuid.uuid4())
            # An inline image (staged: uploaded), then a file id that is not the caller's: a 400.
            refused: Any = [
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "file", "file": {"file_id": missing}},
                {"type": "text", "text": "look"},
            ]
            with pytest.raises(BadRequestError):
                await oai.chat.completions.create(model="agentchat", messages=[{"role": "user", "content": refused}])
            assert await keys_in_bucket() == []
            # The same image twice in one request: one file, one object.
            twice: Any = [
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "image_url", "image_url": {"url": image}},
                {"type": "text", "text": "twice"},
            ]
            await oai.chat.completions.create(model="agentchat", messages=[{"role": "user", "content": twice}])
            assert len(await keys_in_bucket()) == 1
            async with live.state.sessions() as session:
                assert (await session.execute(select(func.count()).select_from(StoredFile))).scalar_one() == 1


async def test_a_deleted_files_object_goes_once_its_row_is_gone(
    s3: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bytes deleted before the row's delete commits would leave a file without them if that commit failed.
    on_s3 = settings.model_copy(update={"file_storage_url": f"s3://{BUCKET}/uploads"})
    rows_seen: list[int] = []
    delete = S3Storage.delete

    async def watched(self: S3Storage, *args: Any, **kwargs: Any) -> None:
        async with sessions() as session:  # what another transaction sees at that moment
            rows_seen.append((await session.execute(select(func.count()).select_from(StoredFile))).scalar_one())
        await delete(self, *args, **kwargs)

    monkeypatch.setattr(S3Storage, "delete", watched)
    async with running_app(on_s3) as (_, state, client):
        sessions = state.sessions
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        file_id = (await client.post("/files", files={"file": ("a.png", samples.png())}, headers=auth)).json()["id"]
        assert (await client.delete(f"/files/{file_id}", headers=auth)).status_code == 204
    assert rows_seen == [0]
    assert await keys_in_bucket() == []
