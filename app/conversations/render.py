"""Stored rows → API items: one `user` and one `assistant` item per turn."""

from __future__ import annotations

from typing import Any

from app.conversations.schemas import MessageOut, PendingApprovalOut, SummaryOut, ToolCallOut, UsageOut
from app.files.schemas import attachments_of
from app.llm.base import Usage, text_of
from app.llm.summary import PROVIDER_FIGURES, SUMMARY_ROLE, compaction_of, provider_compaction
from app.models import Message


def _result_text(content: Any) -> Any:
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")
    return content


def usage_out(usage: Usage) -> UsageOut:
    return UsageOut(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_input_tokens=usage.cache_read_input_tokens,
        cache_creation_input_tokens=usage.cache_creation_input_tokens,
    )


def tool_calls(blocks: list[dict[str, Any]]) -> list[ToolCallOut]:
    """tool_use blocks paired with their tool_result blocks, in call order."""
    results = {b.get("tool_use_id"): b for b in blocks if b.get("type") == "tool_result"}
    return [
        ToolCallOut(
            id=b["id"],
            name=b["name"],
            input=b.get("input") or {},
            result=_result_text(results[b["id"]].get("content")) if b["id"] in results else None,
            is_error=bool(results[b["id"]].get("is_error")) if b["id"] in results else False,
        )
        for b in blocks
        if b.get("type") == "tool_use"
    ]


def pending_of(blocks: list[dict[str, Any]]) -> list[PendingApprovalOut]:
    """A paused answer's calls that wait for a decision: those without a result."""
    answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
    return [
        PendingApprovalOut(tool_use_id=b["id"], name=b["name"], input=b.get("input") or {})
        for b in blocks
        if b.get("type") == "tool_use" and b["id"] not in answered
    ]


def summary_out(block: dict[str, Any]) -> SummaryOut:
    covers = block.get("covers") or (None, None)
    return SummaryOut(
        covers_from=covers[0],
        covers_to=covers[1],
        messages_summarized=block.get("messages_summarized", 0),
        tokens_before=block.get("tokens_before", 0),
        tokens_after=block.get("tokens_after", 0),
        fallback=bool(block.get("fallback")),
        tool_results_cleared_before=block.get("cleared_before"),
    )


def provider_summary_out(blocks: list[dict[str, Any]]) -> SummaryOut | None:
    """An answer the provider compacted (`compaction: provider`): the compaction's figures, as a
    summary item's (it folded all that came before it; the provider's summary text is not shown)."""
    block = provider_compaction(blocks)
    if block is None:
        return None
    figures = block.get(PROVIDER_FIGURES) or {}
    return SummaryOut(
        covers_from=None,
        covers_to=None,
        messages_summarized=figures.get("messages_summarized", 0),
        tokens_before=figures.get("tokens_before", 0),
        tokens_after=figures.get("tokens_after", 0),
        fallback=False,
    )


def render_message(message: Message) -> MessageOut:
    blocks = message.content or []
    usage = None
    if message.role == SUMMARY_ROLE and (block := compaction_of(blocks)) is not None:
        stored = Usage(
            message.input_tokens, message.output_tokens, message.cache_read_tokens, message.cache_creation_tokens
        )
        return MessageOut(
            id=message.id,
            parent_id=message.parent_id,
            role="summary",
            content=block.get("text") or "",
            status=message.status,
            model=message.model,
            usage=usage_out(stored),
            summary=summary_out(block),
            created_at=message.created_at,
        )
    if message.role == "assistant":
        stored = Usage(
            message.input_tokens, message.output_tokens, message.cache_read_tokens, message.cache_creation_tokens
        )
        usage = usage_out(stored)
    return MessageOut(
        id=message.id,
        parent_id=message.parent_id,
        role=message.role,
        content=text_of(blocks),
        status=message.status,
        stop_reason=message.stop_reason,
        model=message.model,
        error=message.error,
        tool_calls=tool_calls(blocks),
        attachments=attachments_of(blocks),
        pending_approvals=pending_of(blocks) if message.status == "awaiting_approval" else [],
        usage=usage,
        summary=provider_summary_out(blocks) if message.role == "assistant" else None,
        created_at=message.created_at,
    )
