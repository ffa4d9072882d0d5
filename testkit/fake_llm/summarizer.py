"""The fake summarizer: a request whose system prompt is the service's summary prompt
(app/turns/compaction.py) gets a deterministic summary instead of the scripted answers.

The summary keeps every line that holds ``FACT:`` (from the previous summary and the messages to
fold in, in order, once each) and counts the messages it folded in. A ``[[summary_fail]]`` anywhere
in what it is asked to summarize makes it answer 500, as an overloaded summarizer would.
"""

from __future__ import annotations

import re

from testkit.fake_llm.content import JSONDict, _blocks

SUMMARY_PROMPT_START = "You are summarizing the earlier part of a conversation"
FAIL_MARK = "[[summary_fail]]"
_FACT = re.compile(r"FACT:[^\n]*")


def _text(content: object) -> str:
    return "\n".join(str(b.get("text", "")) for b in _blocks(content) if b.get("type") == "text")


def is_summary_request(body: JSONDict) -> bool:
    system = body.get("system")
    if isinstance(system, list):
        system = _text(system)
    if not isinstance(system, str):  # Chat Completions: the system message
        messages = body.get("messages") or []
        system = next((_text(m.get("content")) for m in messages if m.get("role") == "system"), "")
    return system.startswith(SUMMARY_PROMPT_START)


def summarize(body: JSONDict) -> str | None:
    """The summary, or None when the request asks it to fail."""
    text = "\n".join(_text(m.get("content")) for m in body.get("messages") or [] if m.get("role") == "user")
    if FAIL_MARK in text:
        return None
    facts = list(dict.fromkeys(match.group(0).strip() for match in _FACT.finditer(text)))
    folded = sum(1 for line in text.splitlines() if line.startswith(("User: ", "Assistant: ")))
    return "\n".join(["Facts:", *facts, f"(folded {folded} messages)"])
