"""Conversation helpers shared by validation and both wire formats: content blocks, word counts, ids."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from typing import Any

JSONDict = dict[str, Any]


def _count_words(value: Any) -> int:
    """Rough token count: whitespace-separated words in every string, recursively."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(_count_words(v) for k, v in value.items() if k not in ("type", "role", "id", "tool_use_id"))
    if isinstance(value, list):
        return sum(_count_words(v) for v in value)
    return 0


def _has_cache_control(value: Any) -> bool:
    if isinstance(value, dict):
        return "cache_control" in value or any(_has_cache_control(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_cache_control(v) for v in value)
    return False


def _blocks(content: Any) -> list[JSONDict]:
    """Content as a list of blocks (string content becomes one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _text_of(content: Any) -> str:
    return "\n".join(b["text"] for b in _blocks(content) if b.get("type") == "text" and isinstance(b.get("text"), str))


def _last_user_text(messages: Sequence[JSONDict]) -> str:
    """The last text block of the most recent user message that has one: what the user just said.

    Only the last block counts, so that a service which merges an unanswered earlier turn into the
    next user message does not replay that turn's directives (tool_result-only turns are skipped).
    """
    for message in reversed(messages):
        texts = (
            [
                b["text"]
                for b in _blocks(message.get("content"))
                if b.get("type") == "text" and isinstance(b.get("text"), str) and b["text"]
            ]
            if message.get("role") == "user"
            else []
        )
        if texts:
            return str(texts[-1])
    return ""


def _split_pieces(text: str) -> list[str]:
    """Word-sized pieces whose concatenation is exactly ``text``."""
    pieces = re.findall(r"\s*\S+", text)
    rest = text[len("".join(pieces)) :]
    if rest:
        if pieces:
            pieces[-1] += rest
        else:
            pieces = [rest]
    return pieces


def _split_json(value: JSONDict, size: int = 12) -> list[str]:
    raw = json.dumps(value)
    return [raw[i : i + size] for i in range(0, len(raw), size)]


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]
