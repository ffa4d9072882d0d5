"""Text that Postgres can store: no NUL characters, no lone UTF-16 surrogates.

Postgres rejects U+0000 in `text` and in `jsonb` strings, and a surrogate code point cannot be
encoded as UTF-8 at all. Both reach Python strings easily (a JSON `\\u0000` or `\\ud800` escape,
a fetched page, a model's tool input). Requests are refused with a 422 (`invalid_characters`);
what the service itself produced (tool results, model output) is cleaned before it is stored.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def invalid_characters(text: str) -> str | None:
    """Why `text` cannot be stored, or None when it can."""
    if "\x00" in text:
        return "must not contain NUL (\\u0000) characters"
    if _SURROGATE.search(text):
        return "must be valid Unicode: it contains an unpaired surrogate (\\ud800-\\udfff)"
    return None


def clean_text(text: str) -> str:
    """`text` with NUL removed and lone surrogates replaced by U+FFFD (a valid pair is joined)."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    if _SURROGATE.search(text):
        # Through UTF-16: a pair that arrived as two code points becomes its character again.
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def clean(value: Any) -> Any:
    """`clean_text` over every string in a JSON-like value (dict keys included)."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k) if isinstance(k, str) else k: clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value
