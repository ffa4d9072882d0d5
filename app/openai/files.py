"""Files in /v1 requests: Chat Completions' `image_url` and `file` parts, Responses' `input_image` and
`input_file`, turned into attachment parts before the call's history is read (app/openai/history.py
takes them as it takes text).

A part names one of the caller's files (`file_id`: an id from POST /files) or carries its bytes
(a base64 `data:` URL, `file_data`): inline data becomes a stored file (the owner's file with the same
bytes if there is one, so a resent history adds nothing). A remote http(s) URL is fetched only through
fetch_url's SSRF-safe fetcher, and only where that tool is on; otherwise it is a 400.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio

from app.files.attach import ATTACHMENT, attachment_block, check_model
from app.files.errors import RemoteFileRefused
from app.files.remote import fetch_remote
from app.files.repository import FileRepository
from app.files.service import Staged, forget_bytes, owner_gate, record_file, stage_bytes
from app.models import StoredFile
from app.openai.errors import InvalidParam
from app.state import Resources

FILE_PARTS = frozenset({"image_url", "file", "input_image", "input_file"})


def user_message(item: Any) -> bool:
    """A Responses input item that is the user's message."""
    return isinstance(item, dict) and item.get("type", "message") == "message" and item.get("role") == "user"


def is_file_part(part: Any) -> bool:
    return isinstance(part, dict) and isinstance(part.get("type"), str) and part["type"] in FILE_PARTS


def has_file_parts(contents: Iterable[tuple[str, Any]]) -> bool:
    return any(is_file_part(part) for _, content in contents if isinstance(content, list) for part in content)


async def attach_parts(
    resources: Resources, owner_id: uuid.UUID, contents: list[tuple[str, Any]], *, model: str
) -> None:
    """Replace each file part of these contents ((param, content list) pairs, changed in place) with
    an attachment part; refuse (a 400) what the agent's model cannot read, before anything else."""
    for param, content in contents:
        for j, part in enumerate(content if isinstance(content, list) else []):
            if isinstance(part, dict) and part.get("type") == ATTACHMENT:  # ours alone make these
                raise InvalidParam(f"{param}[{j}].type", "Content of type 'attachment' is not supported.")
    if not has_file_parts(contents):
        return
    settings = resources.settings
    # Every part's bytes first (a remote fetch, a base64 decode), then staged (inspected; in a bucket,
    # uploaded), then one short transaction records them: no fetch or upload while it holds a
    # connection and the owner's file lock (a bucket's HEAD per new object aside).
    found = [
        (content, j, await _source_of(resources, part, f"{param}[{j}]"))
        for param, content in contents
        if isinstance(content, list)
        for j, part in enumerate(content)
        if is_file_part(part)
    ]
    staged: list[tuple[list[Any], int, _Named | StoredFile | Staged]] = []
    try:
        by_content: dict[str, StoredFile | Staged] = {}  # the same bytes twice in one request: one file
        for content, j, source in found:
            if isinstance(source, _Carried):
                sha256 = hashlib.sha256(source.data).hexdigest()
                if sha256 not in by_content:
                    by_content[sha256] = await _stage(resources, owner_id, source, sha256)
                staged.append((content, j, by_content[sha256]))
            else:
                staged.append((content, j, source))
        # The owner's turn is held until the transaction ends: it takes the owner's file lock per part.
        async with owner_gate(owner_id), resources.sessions() as session, session.begin():
            recorded: dict[int, StoredFile] = {}
            for content, j, ready in staged:
                if isinstance(ready, _Named):
                    row = await _owned(session, owner_id, ready.file_id, ready.where)
                elif isinstance(ready, Staged):
                    if id(ready) not in recorded:
                        recorded[id(ready)] = await record_file(
                            session, resources.files, settings, owner_id=owner_id, staged=ready
                        )
                    row = recorded[id(ready)]
                else:
                    row = ready
                content[j] = {**attachment_block(row), "type": ATTACHMENT}
    except BaseException:
        # Objects put in a bucket for parts that were not recorded (a later part refused, a failure,
        # the client gone): taken back, unless a file has their bytes by now.
        uploads = {s.found.sha256 for _, _, s in staged if isinstance(s, Staged) and s.uploaded}
        with anyio.move_on_after(5, shield=True):
            for sha256 in uploads:
                await forget_bytes(resources.sessions, resources.files, owner_id, sha256)
        raise
    blocks = [part for _, content in contents if isinstance(content, list) for part in content]
    check_model(blocks, model=model, text_only_models=settings.file_text_only_models)


async def _stage(resources: Resources, owner_id: uuid.UUID, carried: _Carried, sha256: str) -> StoredFile | Staged:
    return await stage_bytes(
        resources.sessions,
        resources.files,
        resources.settings,
        owner_id=owner_id,
        data=carried.data,
        filename=carried.name,
        sha256=sha256,
    )


@dataclass(frozen=True, slots=True)
class _Named:
    """A part that names one of the caller's files."""

    file_id: Any
    where: str


@dataclass(frozen=True, slots=True)
class _Carried:
    """A part's bytes: inline, or fetched from its URL."""

    data: bytes
    name: str | None


async def _source_of(resources: Resources, part: dict[str, Any], where: str) -> _Named | _Carried:
    kind = part["type"]
    settings = resources.settings
    file_id: Any = None
    url: Any = None
    data: Any = None
    name: str | None = None
    if kind == "image_url":  # Chat Completions: {"image_url": {"url": …}} (or the URL itself)
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        where += ".image_url.url"
    elif kind == "input_image":  # Responses: {"image_url": "…"} or {"file_id": "…"}
        url, file_id = part.get("image_url"), part.get("file_id")
        where += ".image_url" if url is not None else ".file_id"
    elif kind == "file":  # Chat Completions: {"file": {"file_id"} | {"file_data", "filename"}}
        given = part.get("file")
        inner: dict[str, Any] = given if isinstance(given, dict) else {}
        file_id, data, name = inner.get("file_id"), inner.get("file_data"), inner.get("filename")
        where += ".file.file_id" if file_id is not None else ".file.file_data"
    else:  # input_file: {"file_id"} | {"file_data", "filename"} | {"file_url"}
        file_id, data, name, url = (
            part.get("file_id"),
            part.get("file_data"),
            part.get("filename"),
            part.get("file_url"),
        )
        where += ".file_id" if file_id is not None else ".file_data" if data is not None else ".file_url"
    name = name if isinstance(name, str) else None
    if file_id is not None:
        return _Named(file_id, where)
    if isinstance(url, str) and url.startswith("data:"):
        data = url
    elif isinstance(url, str) and url.startswith(("http://", "https://")):
        if "fetch_url" not in resources.tools.names:
            raise InvalidParam(
                where, "Remote URLs are not fetched here (the fetch_url tool is off): send a data: URL or a file id."
            )
        try:
            fetched, name = await fetch_remote(url, settings)
        except RemoteFileRefused as exc:
            raise InvalidParam(where, exc.message, code="remote_file_refused") from None
        return _Carried(fetched, name)
    elif url is not None:
        raise InvalidParam(where, "Expected a data: URL (base64) or an http(s) URL.")
    if not isinstance(data, str) or not data:
        raise InvalidParam(where, "The part names no file: give file_id, file_data or a URL.")
    return _Carried(_decode(data, where), name)


def _decode(data: str, where: str) -> bytes:
    """A base64 data URL's bytes (or bare base64, as some clients send file_data)."""
    if data.startswith("data:"):
        head, sep, data = data.partition(",")
        if not sep or not head.endswith(";base64"):
            raise InvalidParam(where, "Only base64 data URLs are accepted (data:<type>;base64,<data>).")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParam(where, "The data is not valid base64.") from None


async def _owned(session: Any, owner_id: uuid.UUID, file_id: Any, where: str) -> StoredFile:
    try:
        parsed = uuid.UUID(str(file_id))
    except ValueError:
        raise InvalidParam(where, f"No such file: {file_id}.", code="file_not_found") from None
    row = await FileRepository(session).get_owned(parsed, owner_id=owner_id)
    if row is None:
        raise InvalidParam(where, f"No such file: {file_id}.", code="file_not_found")
    return row
