"""The S3-compatible storage (FILE_STORAGE_URL=s3://bucket/prefix) against a real S3 HTTP server:
moto's server, started here on a loopback port and reached through aiobotocore as any S3 would be."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator

import pytest
from aiobotocore.session import get_session
from moto.server import ThreadedMotoServer
from sqlalchemy import func, select

from app.core.config import Settings
from app.models import FileChunk
from testkit.fake_llm import FakeLLMServer
from testkit.net import free_port
from tests.files import samples
from tests.fixtures.app import make_key, running_app

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
