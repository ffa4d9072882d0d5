"""The current time in a given IANA time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio
from pydantic import BaseModel, Field

from app.agent.tools.base import Tool, ToolContext, ToolError


class CurrentTimeInput(BaseModel):
    timezone: str = Field(default="UTC", description="An IANA time zone name, e.g. 'Europe/Paris'.")


async def current_time(data: CurrentTimeInput, _: ToolContext) -> str:
    try:
        # ZoneInfo reads the tz database from disk the first time: keep that off the event loop.
        zone = await anyio.to_thread.run_sync(ZoneInfo, data.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ToolError(f"Unknown time zone {data.timezone!r}; use an IANA name like 'America/New_York'.") from exc
    now = datetime.now(UTC).astimezone(zone)
    return f"{now.isoformat(timespec='seconds')} ({now:%A}, {data.timezone})"


current_time_tool = Tool(
    name="current_time",
    description="The current date and time in a time zone.",
    input_model=CurrentTimeInput,
    run=current_time,
    untrusted_output=False,
)
