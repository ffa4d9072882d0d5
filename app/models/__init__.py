"""ORM models. Importing this package registers every table on Base.metadata."""

from app.models.base import Base
from app.models.chat import Conversation, Message
from app.models.keys import ApiKey

__all__ = ["ApiKey", "Base", "Conversation", "Message"]
