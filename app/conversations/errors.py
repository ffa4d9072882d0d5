"""Conversation errors."""

from __future__ import annotations

from app.core.errors import Conflict, NotFound


class ConversationNotFound(NotFound):
    default_message = "Conversation not found."


class ConversationBusy(Conflict):
    type, default_message = "conversation_busy", "A turn is already running in this conversation."


class MessageNotFound(NotFound):
    default_message = "Message not found in this conversation."
