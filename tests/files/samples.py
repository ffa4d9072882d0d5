"""Small files of every accepted type, built here byte by byte (headers as the formats define them)."""

from __future__ import annotations

import io
import struct
import zlib

from pypdf import PdfWriter


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png(width: int = 640, height: int = 480, *, pixels: bool = True) -> bytes:
    """A real PNG (one grey row repeated); `pixels=False`: the header only, whatever it claims."""
    header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    if not pixels:
        return header + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b"")
    raw = (b"\x00" + b"\x80" * width) * height
    return header + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


def jpeg(width: int = 320, height: int = 200) -> bytes:
    """A JPEG's markers up to its frame header (SOF0), which is where its size is."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def gif(width: int = 16, height: int = 9) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b"\x3b"


def webp(width: int = 100, height: int = 50) -> bytes:
    """A WebP with an extended header (VP8X), where the canvas size is."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little")
    vp8x += (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def pdf(pages: int = 2) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=200, height=200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# An ELF executable's start, renamed to look like a picture.
EXECUTABLE = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56 + b"\x90" * 256
