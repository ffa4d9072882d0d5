"""Where a file's bytes live, behind one small interface: the database (the default, SQLite or
Postgres) or an S3-compatible bucket (`FILE_STORAGE_URL=s3://bucket/prefix`).

Bytes are stored once per owner and SHA-256 (equal uploads share them). Writes take the spooled
upload (a file on disk past 1 MiB) and reads give chunks, so a file is never held whole twice: the
database's write holds it once (a bytea parameter); S3's streams it in parts.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import urlparse

import anyio
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.core.db import Database
from app.models import FileBlob

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

CHUNK = 1024 * 1024
# S3's smallest part (but the last); uploads up to this size go in one PUT.
PART = 8 * 1024 * 1024


class FileStorage(Protocol):
    """The bytes of an owner's files, by SHA-256."""

    async def put(self, owner_id: uuid.UUID, sha256: str, source: BinaryIO, size: int) -> None:
        """Store `size` bytes read from `source` (seekable, blocking: read in a thread), if not stored yet."""

    def chunks(self, owner_id: uuid.UUID, sha256: str) -> AsyncIterator[bytes]:
        """The bytes, in order, a chunk at a time (nothing if they are gone)."""
        ...

    async def delete(self, owner_id: uuid.UUID, sha256: str) -> None: ...


async def read_all(storage: FileStorage, owner_id: uuid.UUID, sha256: str) -> bytes | None:
    """The whole file (for a model, which takes it base64-encoded in one piece); None if it is gone."""
    parts = [chunk async for chunk in storage.chunks(owner_id, sha256)]
    return b"".join(parts) if parts else None


def _read(source: BinaryIO, size: int) -> bytes:
    source.seek(0)
    return source.read(size)


class DatabaseStorage:
    """`file_blobs` rows: one per owner and hash. Each call is its own short transaction; a read
    takes one chunk per statement, so no connection is held while the client reads."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(self, owner_id: uuid.UUID, sha256: str, source: BinaryIO, size: int) -> None:
        data = await anyio.to_thread.run_sync(_read, source, size)
        insert = pg_insert if self.db.is_postgres else sqlite_insert
        stmt = insert(FileBlob).values(owner_id=owner_id, sha256=sha256, data=data).on_conflict_do_nothing()
        async with self.db.transaction() as conn:
            await conn.execute(stmt)

    async def chunks(self, owner_id: uuid.UUID, sha256: str) -> AsyncIterator[bytes]:
        owned = FileBlob.owner_id == owner_id, FileBlob.sha256 == sha256
        start = 1  # substr counts from 1, on both databases
        while True:
            async with self.db.statement() as conn:
                chunk = (await conn.execute(select(func.substr(FileBlob.data, start, CHUNK)).where(*owned))).scalar()
            if not chunk:
                return
            yield bytes(chunk)
            if len(chunk) < CHUNK:
                return
            start += CHUNK

    async def delete(self, owner_id: uuid.UUID, sha256: str) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(delete(FileBlob).where(FileBlob.owner_id == owner_id, FileBlob.sha256 == sha256))


class S3Storage:
    """An S3-compatible bucket through aiobotocore (credentials, region and endpoint from the usual
    AWS_* variables; AWS_ENDPOINT_URL for MinIO, R2, moto…). Keys: `<prefix>/<owner>/<sha256>`."""

    def __init__(self, client: S3Client, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def key(self, owner_id: uuid.UUID, sha256: str) -> str:
        return "/".join(part for part in (self.prefix, str(owner_id), sha256) if part)

    async def put(self, owner_id: uuid.UUID, sha256: str, source: BinaryIO, size: int) -> None:
        key = self.key(owner_id, sha256)
        await anyio.to_thread.run_sync(source.seek, 0)
        if size <= PART:
            body = await anyio.to_thread.run_sync(source.read, size)
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
            return
        upload = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = upload["UploadId"]
        parts: list[CompletedPartTypeDef] = []
        try:
            number = 1
            while part := await anyio.to_thread.run_sync(source.read, PART):
                done = await self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
                )
                parts.append({"ETag": done["ETag"], "PartNumber": number})
                number += 1
            await self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def chunks(self, owner_id: uuid.UUID, sha256: str) -> AsyncIterator[bytes]:
        try:
            found = await self.client.get_object(Bucket=self.bucket, Key=self.key(owner_id, sha256))
        except self.client.exceptions.NoSuchKey:
            return
        async with found["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK):
                yield chunk

    async def delete(self, owner_id: uuid.UUID, sha256: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self.key(owner_id, sha256))


async def open_storage(url: str | None, db: Database, stack: AsyncExitStack) -> FileStorage:
    """The storage FILE_STORAGE_URL names (None: the database); an S3 client is closed by `stack`."""
    if url is None:
        return DatabaseStorage(db)
    parsed = urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError("FILE_STORAGE_URL must be s3://bucket[/prefix]")
    from aiobotocore.session import get_session  # only when configured: it is a large import

    client = await stack.enter_async_context(get_session().create_client("s3"))
    return S3Storage(client, parsed.netloc, parsed.path)
