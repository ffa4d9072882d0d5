from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.core.pagination import Page
from app.files.schemas import AttachmentOut


class ConversationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    title: str
    system: str | None
    agent: str | None = Field(default=None, description="The agent it is bound to (GET /agents).")
    end_user: str | None = Field(default=None, description="The client's user (`user`, Open WebUI's user id).")
    external_id: str | None = Field(default=None, description="The client's id for it (Open WebUI's chat id).")
    created_at: datetime
    updated_at: datetime


class ConversationPage(Page[ConversationOut]):
    pass


class ToolCallOut(BaseModel):
    id: str
    name: str
    input: dict[str, Any]
    result: Any = None
    is_error: bool = False


class UsageOut(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0


class PendingApprovalOut(BaseModel):
    tool_use_id: str
    name: str
    input: dict[str, Any]


class SummaryOut(BaseModel):
    """What a `summary` item stands for: the model reads it instead of the messages it covers,
    which stay in the history as they were."""

    covers_from: uuid.UUID | None = Field(description="The first message it covers.")
    covers_to: uuid.UUID | None = Field(description="The last message it covers.")
    messages_summarized: int = Field(description="Messages this compaction folded in.")
    tokens_before: int
    tokens_after: int
    fallback: bool = Field(description="The summarizer failed: the covered turns were dropped.")
    tool_results_cleared_before: uuid.UUID | None = None


class MessageOut(BaseModel):
    id: uuid.UUID
    parent_id: uuid.UUID | None = Field(
        default=None,
        description="The message this one follows in its branch (null: the first); a summary's: the message "
        "it was computed at.",
    )
    siblings: int = Field(
        default=0, description="How many other messages follow the same parent (edits, regenerated answers)."
    )
    sibling_ids: list[uuid.UUID] = Field(
        default_factory=list,
        description="This message and its siblings, oldest first: show another branch with `?leaf=<id>`.",
    )
    role: Literal["user", "assistant", "summary"]
    content: str
    status: str
    stop_reason: str | None = None
    model: str | None = None
    error: dict[str, Any] | None = None
    tool_calls: list[ToolCallOut] = []
    attachments: list[AttachmentOut] = []  # a user message's files (POST /chat `attachments`)
    # Status `awaiting_approval`: the calls waiting for POST /conversations/{id}/approvals.
    pending_approvals: list[PendingApprovalOut] = []
    usage: UsageOut | None = None
    summary: SummaryOut | None = None  # role `summary`: what it covers
    created_at: datetime


class MessagePage(BaseModel):
    """One branch of the conversation, first message first."""

    items: list[MessageOut]
    leaf_id: uuid.UUID | None = Field(default=None, description="The last message of the branch shown.")
