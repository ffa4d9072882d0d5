"""Taking in a file: inspect its bytes (type, size, hash, dimensions or pages), check the caps and
the owner's quota, store the bytes once per owner and hash, record its metadata.

Shared by `POST /files` and the /v1 doors' inline data (a data URL or `file_data` becomes a file).
Nothing of a file's content is ever logged: its id, type, size and hash only.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import unicodedata
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import BinaryIO

import anyio
import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.files.errors import QuotaExceeded
from app.files.repository import FileRepository
from app.files.storage import FileStorage
from app.files.types import Inspected, Limits, inspect
from app.models import StoredFile

log = structlog.get_logger(__name__)

MAX_FILENAME = 255


class _Gate:
    __slots__ = ("lock", "holder", "__weakref__")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.holder: asyncio.Task[object] | None = None


# One owner's file writes in this process, in turn: those waiting hold no pool connection (the owner's
# lock in the database, FileRepository.lock_owner, is waited for with one); gone when none is held.
_owner_gates: weakref.WeakValueDictionary[uuid.UUID, _Gate] = weakref.WeakValueDictionary()


@asynccontextmanager
async def owner_gate(owner_id: uuid.UUID) -> AsyncIterator[None]:
    """The owner's turn to write files in this process. A transaction that takes the owner's database
    lock more than once (several parts of one /v1 request) holds its turn until it ends, or another
    upload holding the turn could wait on that lock while this one waits on the turn. Taken again
    by the task that holds it, a no-op."""
    gate = _owner_gates.get(owner_id)
    if gate is None:
        gate = _owner_gates[owner_id] = _Gate()
    task = asyncio.current_task()
    if task is not None and gate.holder is task:
        yield
        return
    async with gate.lock:
        gate.holder = task
        try:
            yield
        finally:
            gate.holder = None


def limits_of(settings: Settings) -> Limits:
    return Limits(settings.file_max_bytes, settings.file_image_max_side, settings.file_pdf_max_pages)


def clean_filename(name: str | None, media_type: str | None = None) -> str:
    """A display name: no path, no control characters, at most 255 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    if not base:
        extension = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp"}
        base = "file" + extension.get(media_type or "", ".pdf" if media_type == "application/pdf" else "")
    return base[:MAX_FILENAME]


@dataclass(frozen=True, slots=True)
class Staged:
    """A file inspected (and, in a bucket, its bytes put there) before the transaction that records it."""

    found: Inspected
    source: BinaryIO
    filename: str | None
    uploaded: bool  # put in the bucket by this upload, before its transaction


async def stage_file(
    sessions: async_sessionmaker[AsyncSession],
    storage: FileStorage,
    settings: Settings,
    *,
    owner_id: uuid.UUID,
    source: BinaryIO,
    filename: str | None,
) -> Staged:
    """Inspect a seekable file; for a bucket, put its bytes there now, with no connection held while
    they upload. One short read first: bytes the owner has are not sent again, and a file plainly over
    the quota is refused before it is (`record_file` checks again, under the owner's lock)."""
    found = await anyio.to_thread.run_sync(inspect, source, filename or "", limits_of(settings))
    if not storage.outside_database:
        return Staged(found, source, filename, uploaded=False)
    quota = settings.file_storage_quota_bytes
    async with sessions() as session:
        files = FileRepository(session)
        known = await files.has_content(owner_id, found.sha256)
        over = bool(quota) and not known and await files.stored_bytes(owner_id) + found.bytes > quota
    if over:
        log.info("files.quota_exceeded", bytes=found.bytes, quota=quota)
        raise QuotaExceeded()
    if not known:
        await storage.put(owner_id, found.sha256, source, found.bytes)
    return Staged(found, source, filename, uploaded=not known)


async def record_file(
    session: AsyncSession, storage: FileStorage, settings: Settings, *, owner_id: uuid.UUID, staged: Staged
) -> StoredFile:
    """Check the quota and record a staged file (its bytes written here when they go in the database);
    its row is flushed in `session`'s transaction, which holds the owner's file lock from here until it
    ends (keep it short: commit it next)."""
    found = staged.found
    async with owner_gate(owner_id):  # waiting here holds no connection
        files = FileRepository(session)
        await files.lock_owner(owner_id)  # until the row is committed: the quota's check and the write are one step
        stored = await files.has_content(owner_id, found.sha256)
        quota = settings.file_storage_quota_bytes
        if quota and not stored and await files.stored_bytes(owner_id) + found.bytes > quota:
            if staged.uploaded:
                await storage.delete(owner_id, found.sha256)  # put by this upload, and no file has them
            log.info("files.quota_exceeded", bytes=found.bytes, quota=quota)
            raise QuotaExceeded()
        if not stored:
            if not storage.outside_database:
                await storage.put(owner_id, found.sha256, staged.source, found.bytes, within=session)
            elif not staged.uploaded or not await storage.exists(owner_id, found.sha256):
                # Known when staged, or put then and deleted since with the owner's last file that
                # had them (a delete under this lock, committed before it was ours): put them again.
                await storage.put(owner_id, found.sha256, staged.source, found.bytes)
        row = await files.add(
            StoredFile(
                owner_id=owner_id,
                filename=clean_filename(staged.filename, found.media_type),
                media_type=found.media_type,
                bytes=found.bytes,
                sha256=found.sha256,
                width=found.width,
                height=found.height,
                pages=found.pages,
            )
        )
        log.info("files.stored", file_id=str(row.id), media_type=row.media_type, bytes=row.bytes, deduplicated=stored)
        return row


async def store_file(
    sessions: async_sessionmaker[AsyncSession],
    storage: FileStorage,
    settings: Settings,
    *,
    owner_id: uuid.UUID,
    source: BinaryIO,
    filename: str | None,
) -> StoredFile:
    """`stage_file`, then `record_file` in a short transaction of its own (committed on return); an
    object staged for a file that was not recorded is taken back."""
    staged = await stage_file(sessions, storage, settings, owner_id=owner_id, source=source, filename=filename)
    try:
        async with sessions() as session, session.begin():
            return await record_file(session, storage, settings, owner_id=owner_id, staged=staged)
    except BaseException:
        if staged.uploaded:
            with anyio.move_on_after(5, shield=True):
                await forget_bytes(sessions, storage, owner_id, staged.found.sha256)
        raise


async def forget_bytes(
    sessions: async_sessionmaker[AsyncSession], storage: FileStorage, owner_id: uuid.UUID, sha256: str
) -> None:
    """Delete bytes from a bucket unless a file of the owner has them by now (under the owner's lock):
    an upload's staged object whose file was not recorded, a deleted file's once its row is gone.
    Failures are logged, not raised: the caller's own outcome stands; the object is left behind."""
    try:
        async with owner_gate(owner_id), sessions() as session, session.begin():
            files = FileRepository(session)
            await files.lock_owner(owner_id)
            if not await files.has_content(owner_id, sha256):
                await storage.delete(owner_id, sha256)
    except Exception as exc:
        log.warning("files.bytes_left", sha256=sha256, error=type(exc).__name__)


async def stage_bytes(
    sessions: async_sessionmaker[AsyncSession],
    storage: FileStorage,
    settings: Settings,
    *,
    owner_id: uuid.UUID,
    data: bytes,
    filename: str | None,
    sha256: str | None = None,
) -> StoredFile | Staged:
    """Inline data (a /v1 data URL or `file_data`), staged as an upload is; or the owner's file with
    the same bytes if there is one (one short read), so a client that sends its history again adds
    no file, and uploads nothing, per call. `sha256`: the data's, when the caller has it."""
    async with sessions() as session:
        found = await FileRepository(session).with_content(owner_id, sha256 or hashlib.sha256(data).hexdigest())
    if found is not None:
        return found
    # BytesIO over bytes shares their buffer (no copy until written to): the data is held once.
    source = io.BytesIO(data)
    return await stage_file(sessions, storage, settings, owner_id=owner_id, source=source, filename=filename)


async def delete_file(
    sessions: async_sessionmaker[AsyncSession], storage: FileStorage, file_id: uuid.UUID, *, owner_id: uuid.UUID
) -> bool:
    """The file's metadata goes; its bytes too once no other file of the owner has them: in the same
    transaction when they are in the database, after it commits when they are in a bucket (a commit
    that fails must not leave a file without its bytes). Messages that attached it keep their
    reference (the history shows it as deleted)."""
    async with owner_gate(owner_id):
        async with sessions() as session, session.begin():
            files = FileRepository(session)
            await files.lock_owner(owner_id)  # no upload of the same bytes between the check and the bytes' delete
            row = await files.delete_owned(file_id, owner_id=owner_id)
            if row is None:
                return False
            unshared = not await files.has_content(owner_id, row.sha256)
            if unshared and not storage.outside_database:
                await storage.delete(owner_id, row.sha256, within=session)
        if unshared and storage.outside_database:
            await forget_bytes(sessions, storage, owner_id, row.sha256)
    log.info("files.deleted", file_id=str(file_id))
    return True
