"""What a file is, decided from its bytes (magic numbers), never from its name or the client's header.

Accepted: PNG, JPEG, GIF, WebP, PDF, and UTF-8 text (plain, Markdown, CSV). An image's dimensions
are read from its header (imagesize: a few bytes, never a decode); a PDF's page count from its page
tree (pypdf: the cross-reference table and the tree's /Count, no page is rendered). `inspect` runs
in a worker thread over the spooled upload: it reads the file once, in chunks, hashing as it goes.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
from dataclasses import dataclass
from typing import BinaryIO

import imagesize  # type: ignore[import-untyped]  # no stubs or py.typed
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from app.files.errors import FileTooLarge, ImageTooLarge, TooManyPages, UnsupportedMediaType

CHUNK = 1024 * 1024
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
TEXT_TYPES = ("text/plain", "text/markdown", "text/csv")
# Text may hold these control characters; any other (NUL above all) says it is not text.
_TEXT_CONTROLS = {"\t", "\n", "\r", "\f"}
# pypdf logs what it repairs in a damaged file; none of it is ours to log (nor the file's content).
logging.getLogger("pypdf").setLevel(logging.ERROR)


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    image_max_side: int
    pdf_max_pages: int


@dataclass(frozen=True, slots=True)
class Inspected:
    media_type: str
    bytes: int
    sha256: str
    width: int | None = None
    height: int | None = None
    pages: int | None = None


def magic_type(head: bytes) -> str | None:
    """The binary type its first bytes announce, if it is one we take."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"%PDF-"):
        return "application/pdf"
    return None


def text_subtype(filename: str) -> str:
    """Text is text from its bytes; which text (Markdown, CSV) only its name can say, and a wrong
    guess is harmless (all three are sent to the model as text and served as attachments)."""
    name = filename.lower()
    if name.endswith((".md", ".markdown")):
        return "text/markdown"
    if name.endswith(".csv"):
        return "text/csv"
    return "text/plain"


def inspect(source: BinaryIO, filename: str, limits: Limits) -> Inspected:
    """Hash, size and type of a seekable file, read once in chunks (blocking: run it in a thread).

    Raises FileTooLarge, UnsupportedMediaType, ImageTooLarge or TooManyPages.
    """
    source.seek(0)
    digest, size = hashlib.sha256(), 0
    decoder = codecs.getincrementaldecoder("utf-8")()
    kind: str | None = None
    is_text = True
    first = True
    while chunk := source.read(CHUNK):
        size += len(chunk)
        if size > limits.max_bytes:
            raise FileTooLarge(f"The file is larger than {limits.max_bytes} bytes (FILE_MAX_BYTES).")
        digest.update(chunk)
        if first:
            kind, first = magic_type(chunk[:16]), False
        if kind is None and is_text:
            try:
                decoded = decoder.decode(chunk)
            except UnicodeDecodeError:
                is_text = False
            else:
                is_text = not any(c < " " and c not in _TEXT_CONTROLS for c in decoded)
    if kind is None:
        if size == 0 or not is_text:
            raise UnsupportedMediaType()
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:  # the file ends inside a character
            raise UnsupportedMediaType() from exc
        kind = text_subtype(filename)
    found = Inspected(kind, size, digest.hexdigest())
    if kind in IMAGE_TYPES:
        return _image(source, found, limits)
    if kind == "application/pdf":
        return _pdf(source, found, limits)
    return found


def _image(source: BinaryIO, found: Inspected, limits: Limits) -> Inspected:
    source.seek(0)
    try:
        width, height = imagesize.get(source, exif_rotation=False)
    except (ValueError, OSError) as exc:
        raise UnsupportedMediaType("The image's header is unreadable.") from exc
    if width <= 0 or height <= 0:
        raise UnsupportedMediaType("The image's header is unreadable.")
    side = limits.image_max_side
    if width > side or height > side:
        raise ImageTooLarge(f"The image is {width}×{height}; models take at most {side} pixels a side.")
    return Inspected(found.media_type, found.bytes, found.sha256, width=width, height=height)


def _pdf(source: BinaryIO, found: Inspected, limits: Limits) -> Inspected:
    source.seek(0)
    try:
        pages = len(PdfReader(source).pages)
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        raise UnsupportedMediaType("The PDF is unreadable.") from exc
    if pages > limits.pdf_max_pages:
        raise TooManyPages(f"The PDF has {pages} pages; models take at most {limits.pdf_max_pages}.")
    return Inspected(found.media_type, found.bytes, found.sha256, pages=pages)
