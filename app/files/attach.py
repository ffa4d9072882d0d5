"""Files attached to a turn: stored as references on the user's message, turned into what models read.

A user message stores an `attachment` block per file: `{"type": "attachment", "file_id", "filename",
"media_type", "bytes", "width"?, "height"?, "pages"?}` — never the bytes. Before the model is called
(`materialise`, after phase 1) each becomes a block of the Messages API shape, which the Anthropic
provider sends as is and the OpenAI-compatible one translates: an image a base64 `image` block, a
PDF a base64 `document` block, a text file a text block. A file deleted since is a note saying so;
an image for a model that takes none (an earlier turn's, under another agent) a note as well.
"""

from __future__ import annotations

import fnmatch
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Protocol, TypeVar

import structlog
from sqlalchemy import select

from app.core.db import Transactions
from app.files.errors import AttachmentsUnsupported, FileNotFound
from app.files.storage import FileStorage, read_base64, read_bytes, read_text
from app.files.types import IMAGE_TYPES
from app.llm.base import Block, FileSources, LLMRequest
from app.models import Conversation, StoredFile

log = structlog.get_logger(__name__)

ATTACHMENT = "attachment"
_META = ("width", "height", "pages")


def attachment_block(row: Any) -> Block:
    """A file's reference, as a user message stores it (`row`: a StoredFile, or a row of its table)."""
    block: Block = {
        "type": ATTACHMENT,
        "file_id": str(row.id),
        "filename": row.filename,
        "media_type": row.media_type,
        "bytes": row.bytes,
        "sha256": row.sha256,  # how its bytes are found in the storage (once per owner and hash)
    }
    block.update({name: getattr(row, name) for name in _META if getattr(row, name) is not None})
    return block


def is_binary(media_type: str) -> bool:
    """What only a model that reads images and documents takes (text files are text to every model)."""
    return media_type in IMAGE_TYPES or media_type == "application/pdf"


def takes_files(model: str, text_only_models: str) -> bool:
    """Whether a model reads images and PDFs: not one FILE_TEXT_ONLY_MODELS names (every provider
    here passes them on; the offline demo describes them)."""
    patterns = [p.strip() for p in text_only_models.split(",") if p.strip()]
    return not any(fnmatch.fnmatchcase(model, pattern) for pattern in patterns)


async def resolve_attachments(
    transactions: Transactions,
    ids: Sequence[uuid.UUID],
    *,
    owner_id: uuid.UUID,
    conversation_id: uuid.UUID | None = None,
) -> tuple[list[Block], str | None]:
    """The owner's files `ids` as attachment blocks, in the order given, and the agent the continued
    conversation is bound to (None: none, or no such conversation of this owner: phase 1 says so).
    Only for a turn that attaches something: one more statement before phase 1, which must know
    each file's type and size to store its reference, and the model, to refuse what it cannot read
    before anything is stored. Another key's file, or none, is FileNotFound (its id named)."""
    unique = list(dict.fromkeys(ids))
    bound = select(Conversation.agent).where(Conversation.id == conversation_id, Conversation.owner_id == owner_id)
    # One statement: the files, each row carrying the conversation's agent (a scalar subquery).
    stmt = select(StoredFile.__table__, bound.scalar_subquery().label("bound_agent")).where(
        StoredFile.id.in_(unique), StoredFile.owner_id == owner_id
    )
    async with transactions() as tx:
        found = (await tx.conn.execute(stmt)).all()
    rows = {row.id: row for row in found}
    agent = found[0].bound_agent if found and conversation_id is not None else None
    missing = [str(i) for i in unique if i not in rows]
    if missing:
        raise FileNotFound(f"File not found: {missing[0]}.")
    return [attachment_block(rows[i]) for i in unique], agent


def check_model(blocks: Iterable[Block], *, model: str, text_only_models: str) -> None:
    """A clear 422 before anything is stored or sent, when the model cannot read what is attached."""
    binary = [b for b in blocks if b.get("type") == ATTACHMENT and is_binary(str(b.get("media_type")))]
    if binary and not takes_files(model, text_only_models):
        raise AttachmentsUnsupported(
            f"The model {model} takes no images or PDFs ({binary[0]['filename']} is {binary[0]['media_type']})."
        )


def has_attachments(messages: Iterable[dict[str, Any]]) -> bool:
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(b.get("type") == ATTACHMENT for b in content if isinstance(b, dict)):
            return True
    return False


async def materialise(
    request: LLMRequest,
    storage: FileStorage,
    *,
    owner_id: uuid.UUID,
    files: bool,
    uploader: FileSources | None = None,
) -> LLMRequest:
    """The request with every attachment block turned into what the model reads (see the module's
    docstring). `files`: the model reads images and PDFs. Each file is read once per request.
    `uploader`: the provider's files API, where the agent uses it (images and PDFs named by its id)."""
    if not has_attachments(request.messages):
        return request
    cache: dict[str, str | None] = {}  # a file's base64 or text, read once per request
    messages = []
    for message in request.messages:
        content = message.get("content")
        if not isinstance(content, list) or not any(
            isinstance(b, dict) and b.get("type") == ATTACHMENT for b in content
        ):
            messages.append(message)
            continue
        blocks: list[Block] = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == ATTACHMENT:
                blocks.append(await _model_block(block, storage, owner_id, files, cache, uploader))
            else:
                blocks.append(block)
        messages.append({**message, "content": blocks})
    return replace(request, messages=messages)


async def _model_block(
    block: Block,
    storage: FileStorage,
    owner_id: uuid.UUID,
    files: bool,
    cache: dict[str, str | None],
    uploader: FileSources | None = None,
) -> Block:
    name, media_type = str(block.get("filename", "file")), str(block.get("media_type", ""))
    if is_binary(media_type) and not files:
        return {"type": "text", "text": f"[Attached {name} ({media_type}): this model cannot read it.]"}
    sha256, data = block.get("sha256"), None
    if uploader is not None and is_binary(media_type) and isinstance(sha256, str):
        digest = sha256

        async def whole() -> bytes | None:
            return await read_bytes(storage, owner_id, digest)

        source = await uploader.file_source(digest, name, media_type, whole)
        if source is not None:
            kind = "image" if media_type in IMAGE_TYPES else "document"
            return {"type": kind, "source": source} | ({"title": name} if kind == "document" else {})
    if isinstance(sha256, str):
        if sha256 not in cache:
            read = read_base64 if is_binary(media_type) else read_text
            cache[sha256] = await read(storage, owner_id, sha256)
        data = cache[sha256]
    if data is None:
        return {"type": "text", "text": f"[Attached {name} ({media_type}): the file has since been deleted.]"}
    if media_type in IMAGE_TYPES:
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if media_type == "application/pdf":
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "document", "source": source, "title": name}
    text = data
    return {
        "type": "text",
        "text": f'<attached_file name="{name}" media_type="{media_type}">\n{text}\n</attached_file>',
    }


class Started(Protocol):
    """A turn after phase 1 (app/turns/begin.py's TurnStarted): its model and its request."""

    @property
    def model(self) -> str: ...

    @property
    def request(self) -> LLMRequest: ...

    @property
    def agent(self) -> Any: ...  # a ServedAgent (app/agents sits above this package)


S = TypeVar("S", bound=Started)


async def with_files(started: S, storage: FileStorage, *, owner_id: uuid.UUID, text_only_models: str) -> S:
    """A started turn whose request carries its attachments' content (unchanged when it has none)."""
    if not has_attachments(started.request.messages):
        return started
    files = takes_files(started.model, text_only_models)
    llm = started.agent.llm
    uploader = llm if started.agent.config.provider_files and isinstance(llm, FileSources) else None
    request = await materialise(started.request, storage, owner_id=owner_id, files=files, uploader=uploader)
    return replace(started, request=request)  # type: ignore[type-var]  # a dataclass (TurnStarted)
