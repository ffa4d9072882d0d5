"""Memory errors."""

from __future__ import annotations

from app.core.errors import NotFound


class MemoryNotFound(NotFound):
    default_message = "Memory not found."
