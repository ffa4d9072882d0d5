"""Conversations and their messages: one `user` and one `assistant` message per turn, each below
the message it follows (`parent_id`), so edits and regenerated answers are branches of one tree."""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base, JSONType, Timestamps, UUIDPrimaryKey


class MessageStatus(StrEnum):
    """A user message is stored `complete`; an assistant message starts `in_progress`, then is
    recorded `complete`, `incomplete` (client left or shutdown; partial text kept), `error`, or
    `awaiting_approval` (paused until its pending tool calls are decided, then `in_progress` again)."""

    IN_PROGRESS = "in_progress"
    AWAITING_APPROVAL = "awaiting_approval"  # paused: some tool calls wait for a person's decision
    COMPLETE = "complete"
    INCOMPLETE = "incomplete"
    ERROR = "error"


class Conversation(UUIDPrimaryKey, Timestamps, Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index("ix_conversations_owner_recent", "owner_id", "updated_at", "id"),
        Index("ix_conversations_updated_at", "updated_at"),  # the retention sweep's order
        # A client's own id for the conversation (Open WebUI's chat id): one conversation per owner and id.
        Index(
            "ix_conversations_owner_external_id",
            "owner_id",
            "external_id",
            unique=True,
            postgresql_where=text("external_id IS NOT NULL"),
            sqlite_where=text("external_id IS NOT NULL"),
        ),
        Index(
            "ix_conversations_owner_end_user",
            "owner_id",
            "end_user",
            "updated_at",
            "id",
            postgresql_where=text("end_user IS NOT NULL"),
            sqlite_where=text("end_user IS NOT NULL"),
        ),
    )

    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    system: Mapped[str | None] = mapped_column(Text)
    # The agent the conversation is bound to; NULL: the default agent (conversations from before agents).
    agent: Mapped[str | None] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(200))
    end_user: Mapped[str | None] = mapped_column(String(200))  # the client's user (Open WebUI, `user`)
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONType)  # e.g. OpenAI conversation metadata


class Message(UUIDPrimaryKey, Timestamps, Base):
    """One user or assistant item of a turn. Ids are UUIDv7, so ordering by id is creation order
    (a message's ancestors always sort before it)."""

    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_conversation_order", "conversation_id", "id"),
        # Partial: only answers given through the OpenAI-compatible door carry a key.
        Index(
            "ix_messages_history_key",
            "history_key",
            postgresql_where=text("history_key IS NOT NULL"),
            sqlite_where=text("history_key IS NOT NULL"),
        ),
        # Partial: the sweep of pauses past APPROVAL_TIMEOUT_SECONDS reads only these.
        Index(
            "ix_messages_awaiting_approval",
            "updated_at",
            postgresql_where=text("status = 'awaiting_approval'"),
            sqlite_where=text("status = 'awaiting_approval'"),
        ),
        # Partial: the sweep of answers a dead process left running reads only these (a handful).
        Index(
            "ix_messages_in_progress",
            "created_at",
            postgresql_where=text("status = 'in_progress'"),
            sqlite_where=text("status = 'in_progress'"),
        ),
    )

    conversation_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    # The message this one follows in its branch (ROOT: a first message of its own; NULL: a row from
    # before branches, which follows the one before it by id); a compaction row's is the message it
    # acts on last (app/conversations/branches.py). No foreign key: phase 1's statement checks a parent
    # it is given, and a key's trigger would cost every INSERT a lookup.
    parent_id: Mapped[uuid.UUID | None] = mapped_column(Uuid())
    role: Mapped[str] = mapped_column(String(16))
    # Anthropic-style content blocks: [{"type": "text", "text": ...}, {"type": "tool_use", ...}, ...]
    content: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(32))
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    model: Mapped[str | None] = mapped_column(String(100))
    input_tokens: Mapped[int] = mapped_column(default=0)
    output_tokens: Mapped[int] = mapped_column(default=0)
    cache_read_tokens: Mapped[int] = mapped_column(default=0)
    cache_creation_tokens: Mapped[int] = mapped_column(default=0)
    # Set by the OpenAI-compatible door (app/openai/): on an answer, a hash of its owner and of the
    # whole exchange up to it as the client sends it back, so the client's next call finds this
    # conversation (app/openai/history.py); the request fields the door shows again on retrieval.
    history_key: Mapped[str | None] = mapped_column(String(64))
    attributes: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
