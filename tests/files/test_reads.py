"""What a model gets of a stored file is read a chunk at a time: base64 across chunk edges that are not
multiples of 3, UTF-8 text across chunk edges that split a character."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import AsyncIterator
from typing import BinaryIO

import pytest

from app.files.storage import read_base64, read_text


class Chunked:
    """A storage that gives its one file back in chunks of the sizes asked for."""

    outside_database = True

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes = data, sizes

    async def put(
        self, owner_id: uuid.UUID, sha256: str, source: BinaryIO, size: int, *, within: object = None
    ) -> None:
        raise NotImplementedError

    async def chunks(self, owner_id: uuid.UUID, sha256: str) -> AsyncIterator[bytes]:
        at = 0
        for size in self.sizes:
            if at >= len(self.data):
                return
            yield self.data[at : at + size]
            at += size

    async def delete(self, owner_id: uuid.UUID, sha256: str, *, within: object = None) -> None:
        raise NotImplementedError

    async def exists(self, owner_id: uuid.UUID, sha256: str) -> bool:
        raise NotImplementedError


OWNER = uuid.uuid4()


@pytest.mark.parametrize("sizes", [[1] * 10, [4, 4, 2], [3, 3, 3, 1], [10], [7, 1, 1, 1]])
async def test_base64_across_chunk_edges(sizes: list[int]) -> None:
    data = os.urandom(10)
    assert await read_base64(Chunked(data, sizes), OWNER, "h") == base64.b64encode(data).decode()


async def test_text_across_a_split_character_and_a_missing_file() -> None:
    text = "naïve café ✓".encode()
    assert await read_text(Chunked(text, [3, 1, 5, 100]), OWNER, "h") == "naïve café ✓"
    assert await read_text(Chunked(b"", []), OWNER, "h") is None
    assert await read_base64(Chunked(b"", []), OWNER, "h") is None
