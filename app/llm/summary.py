"""How a conversation's summary is stored and how the model reads it (app/turns/compaction.py writes
it; the history API and the providers' cache breakpoints read it).

A compaction is stored as a message of role `summary` whose one content block has type
`compaction`: the summary text, the messages it covers (first and last id), where tool results
stop being cleared, and its figures. The model gets the text first in its history, wrapped in
`<conversation_summary>`.

An agent with `compaction: provider` has none of these: the provider (Anthropic) compacts during a
call and answers with a `compaction` block first in its content, kept in the answer's stored blocks
and sent back as it came (app/agent/history.py starts the history there). Our figures of it (the
`context` event's) ride on the stored block under `PROVIDER_FIGURES`, never sent to the provider.
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


PROVIDER_FIGURES = "agentchat"  # our figures on a provider's compaction block (app/llm/anthropic.py)
NEWS_FIELDS = ("messages_summarized", "tokens_before", "tokens_after")


def is_summary_block(block: Block) -> bool:
    """The block a summary is sent as, ours or the provider's compaction (the cache breakpoint goes after it)."""
    kind = block.get("type")
    return kind == COMPACTION or (kind == "text" and str(block.get("text", "")).startswith(SUMMARY_OPEN))


def is_compaction(block: Block) -> bool:
    """A provider's compaction block that took effect (the provider ignores one whose content is
    null, a failed compaction: it may go back, but nothing is dropped before it)."""
    return block.get("type") == COMPACTION and block.get("content") is not None


def provider_compaction(blocks: list[Block]) -> Block | None:
    """The latest compaction of an answer's content: the provider's (ours are summary rows)."""
    return next((b for b in reversed(blocks) if isinstance(b, dict) and is_compaction(b)), None)


def compaction_news(blocks: list[Block]) -> dict[str, Any] | None:
    """The `context` event of an answer the provider compacted (None: it did not)."""
    block = provider_compaction(blocks)
    figures = block.get(PROVIDER_FIGURES) if block is not None else None
    if not isinstance(figures, dict):
        return None
    return {"compacted": True, **{name: int(figures.get(name) or 0) for name in NEWS_FIELDS}}


def compaction_of(content: Any) -> dict[str, Any] | None:
    """A summary row's compaction block (None: not one)."""
    blocks = json.loads(content) if isinstance(content, str) else content or []
    return next((b for b in blocks if isinstance(b, dict) and b.get("type") == COMPACTION), None)
