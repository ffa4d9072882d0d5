"""Build a history the Messages API always accepts, whatever happened to earlier turns.

Stored turns are (user row, assistant row). An assistant row's content may hold tool_use and
tool_result blocks in the order they happened; replay splits them back into alternating
assistant/user messages. Then one normalising pass repairs what interrupted turns leave behind.

An answer the provider compacted (an agent's `compaction: provider`) holds its `compaction` block:
the history starts there, with the assistant message that opens with it, since the provider reads
nothing before it anyway (and the block must be sent back).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from app.llm.base import Block
from app.llm.summary import COMPACTION, is_compaction

Msg = dict[str, Any]

INTERRUPTED = "The tool call was interrupted before it returned a result."


def _clean_blocks(blocks: Iterable[Block]) -> list[Block]:
    out = []
    for block in blocks:
        if block.get("type") == "text":
            if not str(block.get("text", "")).strip():
                continue  # the API rejects empty text blocks
            out.append({"type": "text", "text": block["text"]})
        elif block.get("type") == "tool_use":
            out.append(
                {"type": "tool_use", "id": block["id"], "name": block["name"], "input": block.get("input") or {}}
            )
        elif block.get("type") == "tool_result":
            result = {"type": "tool_result", "tool_use_id": block["tool_use_id"], "content": block.get("content") or ""}
            if block.get("is_error"):
                result["is_error"] = True
            out.append(result)
        elif block.get("type") in ("attachment", "image", "document"):
            out.append(block)  # a file the user attached (app/files/attach.py), as it was stored
        elif block.get("type") == COMPACTION:
            out.append(block)  # the provider's, sent back as it came (app/llm/anthropic.py)
    return out


def _compacted(message: Msg) -> bool:
    return message["role"] == "assistant" and bool(message["content"]) and is_compaction(message["content"][0])


def _from_compaction(messages: list[Msg]) -> list[Msg]:
    """The messages from the latest compaction block on (all of them when there is none)."""
    for index in range(len(messages) - 1, -1, -1):
        content = messages[index]["content"]
        at = next((j for j in range(len(content) - 1, -1, -1) if is_compaction(content[j])), None)
        if at is not None:
            return [{"role": messages[index]["role"], "content": content[at:]}, *messages[index + 1 :]]
    return messages


def split_assistant(content: Sequence[Block]) -> list[Msg]:
    """An assistant row's blocks → alternating assistant / user(tool_result) messages."""
    messages: list[Msg] = []
    for block in content:
        role = "user" if block.get("type") == "tool_result" else "assistant"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].append(block)
        else:
            messages.append({"role": role, "content": [block]})
    return messages


def _close_tool_uses(messages: list[Msg]) -> list[Msg]:
    """Every tool_use gets its tool_result in the very next user message, first in that message."""
    out: list[Msg] = []
    for index, message in enumerate(messages):
        if message["role"] == "user" and out and out[-1]["role"] == "assistant":
            wanted = [b["id"] for b in out[-1]["content"] if b["type"] == "tool_use"]
            results = {b["tool_use_id"]: b for b in message["content"] if b["type"] == "tool_result"}
            others = [b for b in message["content"] if b["type"] != "tool_result"]
            closed = [
                results.get(tid)
                or {"type": "tool_result", "tool_use_id": tid, "content": INTERRUPTED, "is_error": True}
                for tid in wanted
            ]
            message = {"role": "user", "content": closed + others}
        elif message["role"] == "user":
            # Results with no tool_use right before them cannot be replayed.
            message = {"role": "user", "content": [b for b in message["content"] if b["type"] != "tool_result"]}
        elif message["role"] == "assistant":
            nxt = messages[index + 1] if index + 1 < len(messages) else None
            if any(b["type"] == "tool_use" for b in message["content"]) and (nxt is None or nxt["role"] != "user"):
                out.append(message)
                ids = [b["id"] for b in message["content"] if b["type"] == "tool_use"]
                out.append(
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": tid, "content": INTERRUPTED, "is_error": True}
                            for tid in ids
                        ],
                    }
                )
                continue
        out.append(message)
    return out


def _merge_same_role(messages: Iterable[Msg]) -> list[Msg]:
    out: list[Msg] = []
    for message in messages:
        if not message["content"]:
            continue
        if out and out[-1]["role"] == message["role"]:
            out[-1] = {"role": message["role"], "content": out[-1]["content"] + message["content"]}
        else:
            out.append({"role": message["role"], "content": list(message["content"])})
    return out


def normalise(messages: Sequence[Msg]) -> list[Msg]:
    cleaned = [{"role": m["role"], "content": _clean_blocks(m["content"])} for m in messages]
    merged = _merge_same_role(_from_compaction(cleaned))
    while merged and merged[0]["role"] != "user" and not _compacted(merged[0]):
        merged.pop(0)
    fixed = _merge_same_role(_close_tool_uses(merged))
    # A tool_result must lead its user message; merging can put text first.
    for message in fixed:
        if message["role"] == "user":
            message["content"].sort(key=lambda b: b["type"] != "tool_result")
    if fixed and fixed[-1]["role"] == "assistant":
        last = fixed[-1]["content"]
        if last and last[-1]["type"] == "text":
            last[-1] = {"type": "text", "text": last[-1]["text"].rstrip()}
    return fixed


def estimate_tokens(message: Msg) -> int:
    content = message["content"]
    files = [b for b in content if isinstance(b, dict) and b.get("type") == "attachment"]
    if not files:
        return max(1, len(repr(content)) // 4)
    others = [b for b in content if not (isinstance(b, dict) and b.get("type") == "attachment")]
    return max(1, len(repr(others)) // 4) + sum(attachment_tokens(b) for b in files)


def attachment_tokens(block: Block) -> int:
    """What an attached file (app/files/attach.py) costs the model, for the budget: Anthropic bills an
    image ~width × height / 750 tokens (~1,600 at most, once scaled), a PDF page ~1,500-3,000; text ~4 bytes a token."""
    media_type = str(block.get("media_type", ""))
    if media_type.startswith("image/"):
        return max(85, min(1600, int(block.get("width") or 0) * int(block.get("height") or 0) // 750))
    if media_type == "application/pdf":
        return 2000 * max(1, int(block.get("pages") or 1))
    return max(1, int(block.get("bytes") or 0) // 4)


def trim_to_budget(messages: list[Msg], budget: int) -> list[Msg]:
    """Drop the oldest whole exchanges until the estimate fits; the newest user message stays."""
    total = sum(estimate_tokens(m) for m in messages)
    start = 0
    while total > budget and start < len(messages) - 1:
        # Advance to the next plain user message so tool_use/tool_result pairs stay whole.
        nxt = start + 1
        while nxt < len(messages) - 1 and not _starts_exchange(messages[nxt]):
            nxt += 1
        if not _starts_exchange(messages[nxt]):
            break
        total -= sum(estimate_tokens(m) for m in messages[start:nxt])
        start = nxt
    return messages[start:]


def _starts_exchange(message: Msg) -> bool:
    return message["role"] == "user" and not any(b["type"] == "tool_result" for b in message["content"])


def build_history(turns: Sequence[tuple[str, list[Block]]], new_user: str | list[Block], *, budget: int) -> list[Msg]:
    """turns: (role, content blocks) rows in order. Returns the messages to send, ending with the new turn.

    The new turn is text, or blocks (a caller's tool results first, then its text).
    """
    messages: list[Msg] = []
    for role, content in turns:
        if role == "user":
            messages.append({"role": "user", "content": list(content)})
        else:
            messages.extend(split_assistant(content))
    return continue_history(messages, new_user, budget=budget)


def continue_history(messages: Sequence[Msg], new_user: str | list[Block], *, budget: int) -> list[Msg]:
    """A history given as messages (a client's own, or replayed rows) and the new turn, repaired and trimmed."""
    content = [{"type": "text", "text": new_user}] if isinstance(new_user, str) else list(new_user)
    return trim_to_budget(normalise([*messages, {"role": "user", "content": content}]), budget)
