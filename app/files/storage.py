"""Where a file's bytes live, behind one small interface: the database (the default, SQLite or
Postgres) or an S3-compatible bucket (`FILE_STORAGE_URL=s3://bucket/prefix`).

Bytes are stored once per owner and SHA-256 (equal uploads share them). Writes take the spooled
upload (a file on disk past 1 MiB) a chunk at a time and reads give chunks, so a file is never held
whole in memory on its way in or out: 1 MiB rows in the database, parts of a multipart upload (or one
PUT up to 8 MiB) in S3.
"""

from __future__ import annotations

import base64
import codecs
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, contextmanager
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import urlparse

import anyio
from sqlalchemy import delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.core.db import Database
from app.files.errors import StorageUnavailable
from app.models import FileChunk

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

CHUNK = 1024 * 1024
# S3's smallest part (but the last); uploads up to this size go in one PUT.
PART = 8 * 1024 * 1024


class FileStorage(Protocol):
    """The bytes of an owner's files, by SHA-256."""

    # True: the bytes live outside the database (a bucket). They are put before the transaction that
    # records their file (no connection held while they upload) and checked under the owner's lock;
    # False: they are written in that transaction (`within`).
    outside_database: bool

    async def put(
        self, owner_id: uuid.UUID, sha256: str, source: BinaryIO, size: int, *, within: AsyncSession | None = None
    ) -> None:
        """Store `size` bytes read from `source` (seekable, blocking: read in a thread), if not stored yet.
        `within`: the caller's transaction, for a storage that keeps the bytes in the database."""

    def chunks(self, owner_id: uuid.UUID, sha256: str) -> AsyncIterator[bytes]:
        """The bytes, in order, a chunk at a time (nothing if they are gone)."""
        ...

    async def delete(self, owner_id: uuid.UUID, sha256: str, *, within: AsyncSession | None = None) -> None: ...

    async def exists(self, owner_id: uuid.UUID, sha256: str) -> bool:
        """Whether the bytes are there (asked of a bucket only, under the owner's lock)."""
        ...


async def read_base64(storage: FileStorage, owner_id: uuid.UUID, sha256: str) -> str | None:
    """The file as base64, encoded a chunk at a time (a model takes it in one piece; the raw bytes are
    never held whole beside it); None if it is gone."""
    pieces: list[str] = []
    carry = b""
    async for chunk in storage.chunks(owner_id, sha256):
        data = carry + chunk
        cut = len(data) - len(data) % 3  # base64 of whole 3-byte groups joins without padding
        pieces.append(base64.b64encode(data[:cut]).decode("ascii"))
        carry = data[cut:]
    if not pieces and not carry:
        return None
    pieces.append(base64.b64encode(carry).decode("ascii"))
    return "".join(pieces)


async def read_bytes(storage: FileStorage, owner_id: uuid.UUID, sha256: str) -> bytes | None:
    """The whole file (an upload to a provider's files API takes it in one piece); None if it is gone."""
    parts = [chunk async for chunk in storage.chunks(owner_id, sha256)]
    return b"".join(parts) if parts else None


async def read_text(storage: FileStorage, owner_id: uuid.UUID, sha256: str) -> str | None:
    """A text file's content, decoded a chunk at a time; None if it is gone."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pieces = [decoder.decode(chunk) async for chunk in storage.chunks(owner_id, sha256)]
    return "".join([*pieces, decoder.decode(b"", final=True)]) if pieces else None


def _read_at(source: BinaryIO, offset: int, size: int) -> bytes:
    source.seek(offset)
    return source.read(size)


class DatabaseStorage:
    """`file_chunks` rows: 1 MiB each, in order, once per owner and hash. A write is one transaction
    of one INSERT per chunk (between them only a read of the spooled upload, a local file); a read is
    one short statement per chunk, so no connection is held while the client reads."""

    outside_database = False

    def __init__(self, db: Database) -> None:
        self.db = db

    async def put(
        self, owner_id: uuid.UUID, sha256: str, source: BinaryIO, size: int, *, within: AsyncSession | None = None
    ) -> None:
        if within is not None:
            # In the caller's transaction, which holds the owner's file lock (app/files/service.py):
            # no second connection taken while it holds one (uploads as many as the pool would wait on
            # each other for good), and the bytes commit or roll back with their file's row. Chunks no
            # file has (a failed upload's, before this) go first. No IntegrityError expected: under
            # the lock no one else writes these chunks (a replica of an older release might: a 500).
            conn = await within.connection()
            await conn.execute(delete(FileChunk).where(FileChunk.owner_id == owner_id, FileChunk.sha256 == sha256))
            await self._write(conn, owner_id, sha256, source, size)
            return
        try:
            async with self.db.transaction() as conn:
                await self._write(conn, owner_id, sha256, source, size)
        except IntegrityError:
            return  # the same bytes stored by a concurrent upload of the owner's, committed first

    @staticmethod
    async def _write(conn: AsyncConnection, owner_id: uuid.UUID, sha256: str, source: BinaryIO, size: int) -> None:
        for seq, offset in enumerate(range(0, max(size, 1), CHUNK)):
            data = await anyio.to_thread.run_sync(_read_at, source, offset, CHUNK)
            await conn.execute(insert(FileChunk).values(owner_id=owner_id, sha256=sha256, seq=seq, data=data))

    async def chunks(self, owner_id: uuid.UUID, sha256: str) -> AsyncIterator[bytes]:
        owned = FileChunk.owner_id == owner_id, FileChunk.sha256 == sha256
        seq = 0
        while True:
            async with self.db.statement() as conn:
                chunk = (await conn.execute(select(FileChunk.data).where(*owned, FileChunk.seq == seq))).scalar()
            if chunk is None:
                return
            yield bytes(chunk)
            if len(chunk) < CHUNK:  # only the last chunk is short: no statement to learn there is no next
                return
            seq += 1

    async def delete(self, owner_id: uuid.UUID, sha256: str, *, within: AsyncSession | None = None) -> None:
        owned = FileChunk.owner_id == owner_id, FileChunk.sha256 == sha256
        if within is not None:
            await (await within.connection()).execute(delete(FileChunk).where(*owned))
            return
        async with self.db.transaction() as conn:
            await conn.execute(delete(FileChunk).where(*owned))

    async def exists(self, owner_id: uuid.UUID, sha256: str) -> bool:
        query = select(FileChunk.seq).where(
            FileChunk.owner_id == owner_id, FileChunk.sha256 == sha256, FileChunk.seq == 0
        )
        async with self.db.statement() as conn:  # its own connection: not for use inside a transaction
            return (await conn.execute(query)).first() is not None


@contextmanager
def _unavailable() -> Iterator[None]:
    """The bucket's failures (unreachable, refused, missing) as a 503, not a 500."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError, OSError) as exc:
        raise StorageUnavailable() from exc


class S3Storage:
    """An S3-compatible bucket through aiobotocore (credentials, region and endpoint from the usual
    AWS_* variables; AWS_ENDPOINT_URL for MinIO, R2, moto…). Keys: `<prefix>/<owner>/<sha256>`.
    Its failures are StorageUnavailable (503, Retry-After)."""

    outside_database = True

    def __init__(self, client: S3Client, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")

    def key(self, owner_id: uuid.UUID, sha256: str) -> str:
        return "/".join(part for part in (self.prefix, str(owner_id), sha256) if part)

    async def put(
        self, owner_id: uuid.UUID, sha256: str, source: BinaryIO, size: int, *, within: AsyncSession | None = None
    ) -> None:  # `within` unused: the bucket is not in the database
        with _unavailable():
            await self._put(owner_id, sha256, source, size)

    async def _put(self, owner_id: uuid.UUID, sha256: str, source: BinaryIO, size: int) -> None:
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
            with anyio.move_on_after(5, shield=True):
                await self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def chunks(self, owner_id: uuid.UUID, sha256: str) -> AsyncIterator[bytes]:
        with _unavailable():
            try:
                found = await self.client.get_object(Bucket=self.bucket, Key=self.key(owner_id, sha256))
            except self.client.exceptions.NoSuchKey:
                return
            async with found["Body"] as body:
                async for chunk in body.iter_chunks(CHUNK):
                    yield chunk

    async def delete(self, owner_id: uuid.UUID, sha256: str, *, within: AsyncSession | None = None) -> None:
        with _unavailable():
            await self.client.delete_object(Bucket=self.bucket, Key=self.key(owner_id, sha256))

    async def exists(self, owner_id: uuid.UUID, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        with _unavailable():
            try:
                await self.client.head_object(Bucket=self.bucket, Key=self.key(owner_id, sha256))
            except ClientError as exc:
                # A missing key is a 403, not a 404, for credentials without s3:ListBucket: "not
                # there" either way (the caller puts the bytes again, which is harmless if they were).
                if exc.response.get("Error", {}).get("Code") in ("404", "403", "NoSuchKey", "NotFound"):
                    return False
                raise
        return True


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
