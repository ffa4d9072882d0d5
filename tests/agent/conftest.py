"""Extra tools that let tests observe the agent loop: slow, failing, huge, and concurrent ones."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from pydantic import BaseModel

from app.agent.tools.base import Tool, ToolContext
from app.core.config import Settings
from app.main import create_app
from tests.fixtures.app import make_key
from tests.helpers import Live, live_server


class Nothing(BaseModel):
    pass


class Seconds(BaseModel):
    seconds: float = 30.0


async def _sleepy(data: Seconds, _: ToolContext) -> str:
    await anyio.sleep(data.seconds)
    return "rested"


async def _explode(_: Nothing, __: ToolContext) -> str:
    raise RuntimeError("kaboom")


async def _huge(_: Nothing, __: ToolContext) -> str:
    return "x" * 100_000


class Rendezvous:
    """Each call waits for the other: only concurrent execution lets both finish."""

    def __init__(self, parties: int) -> None:
        self.parties, self.arrived, self.event = parties, 0, anyio.Event()

    async def __call__(self, _: Nothing, __: ToolContext) -> str:
        self.arrived += 1
        if self.arrived == self.parties:
            self.event.set()
        with anyio.fail_after(3):
            await self.event.wait()
        return f"met {self.parties}"


def test_tools() -> list[Tool[BaseModel]]:
    return [
        Tool("sleepy", "Sleeps.", Seconds, _sleepy),  # type: ignore[arg-type]
        Tool("quick_timeout", "Sleeps past its own time-out.", Seconds, _sleepy, timeout=0.2),  # type: ignore[arg-type]
        Tool("explode", "Always fails.", Nothing, _explode),  # type: ignore[arg-type]
        Tool("huge", "Returns far too much.", Nothing, _huge),  # type: ignore[arg-type]
        Tool("meet", "Meets another call.", Nothing, Rendezvous(2)),  # type: ignore[arg-type]
    ]


@pytest.fixture
async def agent_live(settings: Settings) -> AsyncIterator[Live]:
    async with live_server(create_app(settings, extra_tools=test_tools())) as server:
        yield server


@pytest.fixture
async def agent_key(agent_live: Live) -> str:
    return await make_key(agent_live.state)
