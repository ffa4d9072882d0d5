"""ORM models. Importing this package registers every table on Base.metadata."""

from app.models.base import Base
from app.models.conversations import Conversation, Message, MessageStatus
from app.models.files import FileChunk, StoredFile
from app.models.keys import ApiKey
from app.models.memory import Memory
from app.models.queue import QueuedMessage
from app.models.usage import ModelUsage

__all__ = [
    "ApiKey",
    "Base",
    "Conversation",
    "FileChunk",
    "Memory",
    "Message",
    "MessageStatus",
    "ModelUsage",
    "QueuedMessage",
    "StoredFile",
]
