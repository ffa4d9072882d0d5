"""/files: upload once, attach to any turn (POST /chat `attachments`, the /v1 doors' file ids)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, File, UploadFile, status
from starlette.responses import Response, StreamingResponse

from app.auth.deps import CurrentPrincipal
from app.auth.errors import KEY_RESPONSES
from app.core.errors import InvalidRequest, PayloadTooLarge, responses
from app.core.pagination import PageParamsDep
from app.files.errors import (
    FileNotFound,
    FileTooLarge,
    ImageTooLarge,
    QuotaExceeded,
    TooManyPages,
    UnsupportedMediaType,
)
from app.files.repository import FileRepository
from app.files.schemas import FileOut, FilePage
from app.files.service import delete_file, store_file
from app.files.storage import FileStorage
from app.state import ResourcesDep, SessionDep, SessionsDep, SettingsDep

router = APIRouter(prefix="/files", tags=["files"], responses=KEY_RESPONSES)


async def get_storage(resources: ResourcesDep) -> FileStorage:
    return resources.files


StorageDep = Annotated[FileStorage, Depends(get_storage)]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=responses(
        InvalidRequest, PayloadTooLarge, FileTooLarge, QuotaExceeded, UnsupportedMediaType, ImageTooLarge, TooManyPages
    ),
)
async def upload_file(
    file: Annotated[UploadFile, File(description="The file (multipart form field `file`).")],
    sessions: SessionsDep,
    principal: CurrentPrincipal,
    storage: StorageDep,
    settings: SettingsDep,
) -> FileOut:
    """Upload an image (PNG, JPEG, GIF, WebP), a PDF or a UTF-8 text file; its type is read from its bytes."""
    # Its bytes staged first (in a bucket: uploaded with no connection held), then one short transaction.
    row = await store_file(
        sessions, storage, settings, owner_id=principal.owner_id, source=file.file, filename=file.filename
    )
    return FileOut.model_validate(row)


@router.get("", responses=responses(InvalidRequest))
async def list_files(session: SessionDep, principal: CurrentPrincipal, page: PageParamsDep) -> FilePage:
    """Your files, newest first."""
    found = await FileRepository(session).list_owned(owner_id=principal.owner_id, page=page)
    return FilePage(items=[FileOut.model_validate(row) for row in found.rows], next_cursor=found.next_cursor)


@router.get("/{file_id}", responses=responses(FileNotFound))
async def get_file(file_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal) -> FileOut:
    """One file's metadata."""
    row = await FileRepository(session).get_owned(file_id, owner_id=principal.owner_id)
    if row is None:
        raise FileNotFound()
    return FileOut.model_validate(row)


@router.get(
    "/{file_id}/content",
    responses={**responses(FileNotFound), 200: {"content": {"application/octet-stream": {}}}},
    response_class=StreamingResponse,
)
async def get_file_content(
    file_id: uuid.UUID, session: SessionDep, principal: CurrentPrincipal, storage: StorageDep
) -> StreamingResponse:
    """The file's bytes, with its stored type, as a download (never shown inline)."""
    row = await FileRepository(session).get_owned(file_id, owner_id=principal.owner_id)
    if row is None:
        raise FileNotFound()
    owner, sha256 = row.owner_id, row.sha256
    media_type = row.media_type + ("; charset=utf-8" if row.media_type.startswith("text/") else "")

    async def body() -> AsyncIterator[bytes]:
        async for chunk in storage.chunks(owner, sha256):
            yield chunk

    ascii_name = row.filename.encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    headers = {
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(row.filename)}",
        "Content-Length": str(row.bytes),
        # Whatever the bytes are, a browser neither guesses another type nor runs anything in them.
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    return StreamingResponse(body(), media_type=media_type, headers=headers)


@router.delete("/{file_id}", status_code=status.HTTP_204_NO_CONTENT, responses=responses(FileNotFound))
async def remove_file(
    file_id: uuid.UUID, sessions: SessionsDep, principal: CurrentPrincipal, storage: StorageDep
) -> Response:
    """Delete a file; turns that attached it keep a note that it was there."""
    if not await delete_file(sessions, storage, file_id, owner_id=principal.owner_id):
        raise FileNotFound()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
