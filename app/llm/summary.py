"""How a conversation's summary is stored and how the model reads it (app/turns/compaction.py writes
it; the history API and the providers' cache breakpoints read it).

A compaction is stored as a message of role `summary` whose one content block has type
`compaction`: the summary text, the messages it covers (first and last id), where tool results
stop being cleared, and its figures. The model gets the text first in its history, wrapped in
`<conversation_summary>`.
"""

from __future__ import annotations

import json
from typing import Any

from app.llm.base import Block

SUMMARY_ROLE = "summary"
COMPACTION = "compaction"
SUMMARY_OPEN = "<conversation_summary>"
SUMMARY_CLOSE = "</conversation_summary>"


def summary_text(text: str) -> str:
    """The summary as the model reads it, first in the history."""
    return f"{SUMMARY_OPEN}\nA summary of the earlier conversation:\n{text}\n{SUMMARY_CLOSE}"


def is_summary_block(block: Block) -> bool:
    """The block a summary is sent as (the provider's cache breakpoint goes after it)."""
    return block.get("type") == "text" and str(block.get("text", "")).startswith(SUMMARY_OPEN)


def compaction_of(content: Any) -> dict[str, Any] | None:
    """A summary row's compaction block (None: not one)."""
    blocks = json.loads(content) if isinstance(content, str) else content or []
    return next((b for b in blocks if isinstance(b, dict) and b.get("type") == COMPACTION), None)
