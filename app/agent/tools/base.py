"""What a tool is: a name, a description, a pydantic input model and an async function.

The input model's JSON schema is what the model sees. A tool that needs resources takes them from
its ToolContext with `async with`: a database session per call, the shared httpx2 client.

A tool runs on the event loop that serves every other request of the replica, so it must never
do unbounded synchronous work: bound the cost of its input before computing (the calculator
refuses results beyond a size it estimates first), or move the work to a thread with a limit,
`await anyio.to_thread.run_sync(fn, arg, limiter=...)` (fetch_url parses pages that way). Its
output goes back to the model: a tool that returns text from third parties (web pages, other
services' APIs) keeps `untrusted_output=True`, so what the model remembers after reading it is
marked as such (see app/agent/tools/memory.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import httpx2
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings

In = TypeVar("In", bound=BaseModel)


class ToolError(Exception):
    """A failure the model should read and act on (shown to it as an is_error tool_result)."""


@dataclass
class TurnState:
    """What the tools of one turn learn about it as it goes (one per turn, shared by its tool calls)."""

    # Set by the agent loop once a tool marked untrusted_output has returned in this turn, and by
    # recall when it returns a memory that was itself written after untrusted output.
    saw_untrusted_output: bool = False


@dataclass(frozen=True)
class ToolContext:
    owner_id: uuid.UUID
    conversation_id: uuid.UUID
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    http: httpx2.AsyncClient
    # The assistant message of the turn the tools run in (recorded as a memory's provenance).
    message_id: uuid.UUID | None = None
    turn_state: TurnState = field(default_factory=TurnState)

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
    # Does the result carry third-party text (a web page, another service's answer) that could
    # hold instructions aimed at the model? True unless the tool only returns what it computes
    # itself: the safe default for a tool added later.
    untrusted_output: bool = True

    def schema(self) -> dict[str, Any]:
        """The tool as the Messages API expects it."""
        input_schema = self.input_model.model_json_schema()
        input_schema.pop("title", None)
        return {"name": self.name, "description": self.description, "input_schema": input_schema}
