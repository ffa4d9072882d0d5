"""What a tool is: a name, a description, a pydantic input model and an async function.

The input model's JSON schema is what the model sees. A tool that needs resources takes them from
its ToolContext with `async with`: a database session per call, the shared httpx client.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings

In = TypeVar("In", bound=BaseModel)


class ToolError(Exception):
    """A failure the model should read and act on (shown to it as an is_error tool_result)."""


@dataclass(frozen=True)
class ToolContext:
    owner_id: uuid.UUID
    conversation_id: uuid.UUID
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    http: httpx.AsyncClient

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A short transaction of its own: committed when the block ends, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session


@dataclass(frozen=True)
class Tool(Generic[In]):
    name: str
    description: str
    input_model: type[In]
    run: Callable[[In, ToolContext], Awaitable[str]]
    timeout: float | None = None  # seconds; None means AGENT_TOOL_TIMEOUT

    def schema(self) -> dict[str, Any]:
        """The tool as the Messages API expects it."""
        input_schema = self.input_model.model_json_schema()
        input_schema.pop("title", None)
        return {"name": self.name, "description": self.description, "input_schema": input_schema}
