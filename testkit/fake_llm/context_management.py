"""Server-side context management, as the Messages API does it (beta): context editing
(``clear_tool_uses_20250919``) and compaction (``compact_20260112``).

What the fake does, after the real API's documentation:

- ``context_management.edits`` is checked as the API checks it: known edit types only (each once,
  ``clear_thinking`` first), each opted in to by its beta header (``context-management-2025-06-27``,
  ``compact-2026-01-12``), their fields and a compaction trigger of at least 50,000 input tokens.
- A ``compaction`` block sent back (in an assistant message, with the compaction beta) drops
  everything before it. It must come back as it was returned: its ``encrypted_content`` is the
  fake's own seal of its ``content`` (checked without memory, so a ``reset`` keeps it valid). A
  request that sends again the messages an earlier answer compacted and goes on past them (that
  answer, a later turn) without a compaction block is refused: the block was not sent back (the
  real API would silently compact and bill again; the fake makes the service's mistake visible).
  The same messages alone (a regenerated answer) or fewer (an earlier branch) are compacted afresh.
- Tool results are cleared, oldest first, past the trigger (all but the last ``keep`` tool uses, not
  ``exclude_tools``, only when at least ``clear_at_least`` tokens go): ``applied_edits`` says so.
- Past the compaction trigger the answer opens with a ``compaction`` block whose summary keeps every
  ``FACT:`` line; ``usage.iterations`` then holds the compaction's own sampling (left out of the
  top-level figures, as the API does) and the message's, which read only the summary.

Tokens are the fake's words (``_count_words``), as everywhere in the fake.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from testkit.fake_llm.content import JSONDict, _blocks, _count_words
from testkit.fake_llm.validation import InvalidRequest

CONTEXT_BETA = "context-management-2025-06-27"
COMPACT_BETA = "compact-2026-01-12"
CLEAR_TOOL_USES = "clear_tool_uses_20250919"
CLEAR_THINKING = "clear_thinking_20251015"
COMPACT = "compact_20260112"
EDIT_BETAS = {CLEAR_TOOL_USES: CONTEXT_BETA, CLEAR_THINKING: CONTEXT_BETA, COMPACT: COMPACT_BETA}
COMPACT_DEFAULT_TRIGGER = 150_000
COMPACT_MIN_TRIGGER = 50_000
CLEAR_DEFAULT_TRIGGER = 100_000
CLEAR_DEFAULT_KEEP = 3
CLEARED = "[Tool result cleared by context management]"
COMPACTION_FIELDS = {"type", "content", "encrypted_content", "signature", "tool_changes", "cache_control"}
_FACT = re.compile(r"FACT:[^\n]*")


@dataclass
class Compactions:
    """What the fake compacted: the messages each compaction folded, as (how many, their fingerprint)."""

    folded: set[tuple[int, str]] = field(default_factory=set)

    def clear(self) -> None:
        self.folded.clear()


@dataclass
class Managed:
    """A request after context management: what the model reads, and what the response reports."""

    messages: list[JSONDict]  # from the latest compaction block on, old tool results cleared
    requested: bool = False  # the request sent context_management (its response reports applied_edits)
    applied_edits: list[JSONDict] = field(default_factory=list)
    compaction: JSONDict | None = None  # this answer's new compaction block
    compaction_usage: JSONDict | None = None
    pause: bool = False  # pause_after_compaction: the answer is the compaction block alone

    def context_management(self) -> JSONDict | None:
        return {"applied_edits": self.applied_edits} if self.requested else None

    def usage(self, usage: JSONDict, system: Any, output_tokens: int) -> JSONDict:
        """The response's usage: after a compaction, the message read the system prompt and the
        summary only; the compaction's own sampling is an iteration of its own, not in the top level."""
        if self.compaction is None or self.compaction_usage is None:
            return usage
        read = max(1, _count_words(system) + _count_words(self.compaction["content"]))
        cached = read // 2 if usage.get("cache_read_input_tokens") else 0  # as _anthropic_usage counts it
        message = {**usage, "input_tokens": read, "cache_read_input_tokens": cached}
        iteration = {k: message[k] for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")}
        iteration["output_tokens"] = output_tokens
        return {**message, "iterations": [self.compaction_usage, {"type": "message", **iteration}]}


def _fingerprint(messages: list[JSONDict]) -> str:
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "cache_control"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    raw = json.dumps([[m.get("role"), strip(_blocks(m.get("content")))] for m in messages], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def _seal(content: str) -> str:
    return "fake-compaction-" + hashlib.sha256(content.encode()).hexdigest()[:32]


def _tokens_value(where: str, value: Any, kinds: tuple[str, ...], minimum: int = 0) -> tuple[str, int]:
    if not isinstance(value, dict) or value.get("type") not in kinds or set(value) != {"type", "value"}:
        raise InvalidRequest(f"{where}: expected {{type: {' | '.join(kinds)}, value: int}}")
    number = value["value"]
    if not isinstance(number, int) or isinstance(number, bool) or number < minimum:
        raise InvalidRequest(f"{where}.value: Input should be greater than or equal to {minimum}")
    return value["type"], number


def _check_edits(raw: Any, beta: str) -> list[JSONDict]:
    if not isinstance(raw, dict) or set(raw) - {"edits"}:
        raise InvalidRequest("context_management: Extra inputs are not permitted (expected {edits})")
    edits = raw.get("edits")
    if not isinstance(edits, list):
        raise InvalidRequest("context_management.edits: Input should be a valid list")
    seen: set[str] = set()
    for i, edit in enumerate(edits):
        where = f"context_management.edits.{i}"
        kind = edit.get("type") if isinstance(edit, dict) else None
        if kind not in EDIT_BETAS:
            raise InvalidRequest(
                f"{where}: Input tag {kind!r} found using 'type' does not match any of the expected tags: "
                f"{', '.join(repr(k) for k in EDIT_BETAS)}"
            )
        if EDIT_BETAS[kind] not in beta:
            raise InvalidRequest(f"{where}: {kind} requires the anthropic-beta header {EDIT_BETAS[kind]}")
        if kind in seen:
            raise InvalidRequest(f"{where}: each context management edit may be given once ({kind})")
        seen.add(kind)
        if kind == CLEAR_THINKING and i != 0:
            raise InvalidRequest(f"{where}: clear_thinking_20251015 must come first in edits")
        if kind == CLEAR_TOOL_USES:
            allowed = {"type", "trigger", "keep", "clear_at_least", "exclude_tools", "clear_tool_inputs"}
            if "trigger" in edit:
                _tokens_value(f"{where}.trigger", edit["trigger"], ("input_tokens", "tool_uses"), 1)
            if "keep" in edit:
                _tokens_value(f"{where}.keep", edit["keep"], ("tool_uses",))
            if "clear_at_least" in edit:
                _tokens_value(f"{where}.clear_at_least", edit["clear_at_least"], ("input_tokens",))
        elif kind == COMPACT:
            allowed = {"type", "trigger", "pause_after_compaction", "instructions"}
            if edit.get("trigger") is not None:
                _tokens_value(f"{where}.trigger", edit["trigger"], ("input_tokens",), COMPACT_MIN_TRIGGER)
        else:
            allowed = {"type", "keep"}
        if extra := set(edit) - allowed:
            raise InvalidRequest(f"{where}.{sorted(extra)[0]}: Extra inputs are not permitted")
    return edits


def _check_compaction_blocks(messages: list[JSONDict], beta: str, known: Compactions) -> tuple[int, int] | None:
    """Where the latest compaction block is (message, block), after checking each one sent back."""
    latest = None
    for i, message in enumerate(messages):
        for j, block in enumerate(_blocks(message.get("content"))):
            if block.get("type") != "compaction":
                continue
            where = f"messages.{i}.content.{j}"
            if COMPACT_BETA not in beta:
                raise InvalidRequest(f"{where}: compaction blocks require the anthropic-beta header {COMPACT_BETA}")
            if message.get("role") != "assistant":
                raise InvalidRequest(f"{where}: compaction blocks are only allowed in assistant messages")
            if extra := set(block) - COMPACTION_FIELDS:
                raise InvalidRequest(f"{where}.{sorted(extra)[0]}: Extra inputs are not permitted")
            content = block.get("content")
            if content is not None and (not isinstance(content, str) or not content):
                raise InvalidRequest(f"{where}.content: a non-empty string or null")
            if content is None:
                continue  # a failed compaction sent back: a no-op
            if block.get("encrypted_content") != _seal(content):
                raise InvalidRequest(f"{where}: the compaction block must be sent back exactly as it was returned")
            latest = (i, j)
    return latest


def _clear_tool_uses(messages: list[JSONDict], edit: JSONDict, tokens: int) -> JSONDict | None:
    """Clear the oldest tool results past the trigger, in place; the applied edit, or None."""
    kind, trigger = ("input_tokens", CLEAR_DEFAULT_TRIGGER)
    if "trigger" in edit:
        kind, trigger = edit["trigger"]["type"], edit["trigger"]["value"]
    keep = edit["keep"]["value"] if "keep" in edit else CLEAR_DEFAULT_KEEP
    at_least = edit["clear_at_least"]["value"] if "clear_at_least" in edit else 0
    excluded = set(edit.get("exclude_tools") or ())
    names = {
        b.get("id"): b.get("name")
        for m in messages
        if m.get("role") == "assistant"
        for b in _blocks(m.get("content"))
        if b.get("type") == "tool_use"
    }
    results = [
        b
        for m in messages
        if m.get("role") == "user" and isinstance(m.get("content"), list)
        for b in m["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result" and names.get(b.get("tool_use_id")) not in excluded
    ]
    if (tokens if kind == "input_tokens" else len(results)) < trigger:
        return None
    old = [b for b in results[: max(0, len(results) - keep)] if b.get("content") != CLEARED]
    cleared = sum(_count_words(b.get("content")) - _count_words(CLEARED) for b in old)
    if not old or cleared < at_least:
        return None
    for block in old:
        block["content"] = CLEARED
    return {"type": CLEAR_TOOL_USES, "cleared_tool_uses": len(old), "cleared_input_tokens": max(0, cleared)}


def manage(body: JSONDict, beta: str, known: Compactions) -> Managed:
    """Apply the request's context management; InvalidRequest for what the real API would refuse."""
    messages: list[JSONDict] = body["messages"]
    latest = _check_compaction_blocks(messages, beta, known)
    if latest is not None:  # everything before the latest compaction block is dropped
        i, j = latest
        opening = {**messages[i], "content": _blocks(messages[i]["content"])[j:]}
        messages = [opening, *messages[i + 1 :]]
    raw = body.get("context_management")
    if raw is None:
        return Managed(messages)
    edits = _check_edits(raw, beta)
    compact = next((e for e in edits if e["type"] == COMPACT), None)
    if compact is not None and _sends_folded(messages, known):
        raise InvalidRequest(
            "messages: these messages were compacted by an earlier response; send its compaction block "
            "back (the response's content, as returned) instead of compacting them again"
        )
    managed = Managed(copy.deepcopy(messages), requested=True)
    system = body.get("system")
    for edit in edits:
        tokens = _count_words(system) + _count_words(managed.messages)
        if edit["type"] == CLEAR_TOOL_USES and (applied := _clear_tool_uses(managed.messages, edit, tokens)):
            managed.applied_edits.append(applied)
        elif edit["type"] == COMPACT:
            trigger = (edit.get("trigger") or {}).get("value", COMPACT_DEFAULT_TRIGGER)
            if tokens >= trigger:
                _compact(managed, known, messages, tokens, bool(edit.get("pause_after_compaction")))
    return managed


def _sends_folded(messages: list[JSONDict], known: Compactions) -> bool:
    """The messages begin with all an earlier compaction folded, and go on past them."""
    return any(n < len(messages) and _fingerprint(messages[:n]) == print_ for n, print_ in known.folded)


def _compact(managed: Managed, known: Compactions, messages: list[JSONDict], tokens: int, pause: bool) -> None:
    text = "\n".join(
        str(b.get("text") or b.get("content") or "")
        for m in managed.messages
        for b in _blocks(m.get("content"))
        if b.get("type") in ("text", "compaction", "tool_result")
    )
    facts = list(dict.fromkeys(match.group(0).strip() for match in _FACT.finditer(text)))
    content = "\n".join([f"Summary of the conversation so far ({len(managed.messages)} messages).", *facts])
    seal = _seal(content)
    known.folded.add((len(messages), _fingerprint(messages)))
    managed.compaction = {"type": "compaction", "content": content, "encrypted_content": seal}
    managed.compaction_usage = {
        "type": "compaction",
        "input_tokens": tokens,
        "output_tokens": max(1, _count_words(content)),
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
    }
    managed.pause = pause
