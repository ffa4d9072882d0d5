from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from app.conversations.schemas import PendingApprovalOut, ToolCallOut, UsageOut
from app.core.text import invalid_characters


class ChatRequest(BaseModel):
    message: str = Field(min_length=1, description="The user's turn.")
    conversation_id: uuid.UUID | None = Field(default=None, description="Omit to start a new conversation.")
    parent_message_id: uuid.UUID | None = Field(
        default=None,
        description="Continue from this answer of the conversation instead of its latest message: a new branch "
        "(to edit a message, name the answer before it; the nil UUID 00000000-0000-0000-0000-000000000000 "
        "edits the first one). The model sees only the branch it continues.",
    )
    stream: bool = Field(default=False, description="Answer as Server-Sent Events.")
    on_disconnect: Literal["cancel", "continue"] = Field(
        default="cancel",
        description="Streams only: stop the model when the client leaves, or let the run finish to be rejoined.",
    )
    multitask: Literal["reject", "interrupt", "enqueue"] = Field(
        default="reject",
        description="While another turn of the conversation runs: refuse this one (409), interrupt that "
        "one (its partial answer recorded, stop_reason 'interrupted') and run this one, or enqueue this one "
        "(stored now, answered after the turns ahead of it, in arrival order; a stream starts with `queued`).",
    )
    system: str | None = Field(
        default=None, max_length=20_000, description="System prompt; only when starting a new conversation."
    )
    agent: str | None = Field(
        default=None,
        max_length=64,
        description="The agent (GET /agents). Omit for the conversation's own, or the default for a new one.",
    )
    attachments: list[uuid.UUID] = Field(
        default_factory=list,
        max_length=100,
        description="Ids of your files (POST /files) for the model to read with this message (at most "
        "CHAT_MAX_ATTACHMENTS).",
    )

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("message", "system")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        # A 422 here, not a 500 from Postgres (or from UTF-8 encoding) later.
        problem = invalid_characters(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value


class RegenerateRequest(BaseModel):
    stream: bool = Field(default=False, description="Answer as Server-Sent Events, as POST /chat does.")
    on_disconnect: Literal["cancel", "continue"] = "cancel"
    multitask: Literal["reject", "interrupt"] = Field(
        default="reject",
        description="While another turn of the conversation runs: refuse (409) or interrupt it, as POST /chat.",
    )


class AssistantMessageOut(BaseModel):
    id: uuid.UUID
    role: Literal["assistant"] = "assistant"
    content: str
    status: str
    created_at: datetime
    tool_calls: list[ToolCallOut] = []


class ChatResponse(BaseModel):
    conversation_id: uuid.UUID
    agent: str
    model: str
    stop_reason: str | None
    message: AssistantMessageOut
    usage: UsageOut
    # With stop_reason `awaiting_approval`: the calls waiting for POST /conversations/{id}/approvals.
    pending_approvals: list[PendingApprovalOut] = Field(default_factory=list)


class DecisionIn(BaseModel):
    tool_use_id: str = Field(min_length=1, max_length=200)
    approve: bool
    input: dict[str, Any] | None = Field(default=None, description="Run the call with this input instead.")
    reason: str | None = Field(default=None, max_length=2000, description="Why it was denied (the model reads it).")


class ApprovalsRequest(BaseModel):
    decisions: list[DecisionIn] = Field(min_length=1, max_length=64)
    stream: bool = Field(default=False, description="Answer as Server-Sent Events, as POST /chat does.")
    on_disconnect: Literal["cancel", "continue"] = "cancel"
