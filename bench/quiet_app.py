"""The service with one more tool, `wait`, that sleeps as long as it is asked to (at most 10 minutes):
the slow tool of `python -m bench.streams --scenario quiet`, whose open streams all wait on it. NOT
part of the service; everything else is `app.main`'s app as deployed.

    python -m uvicorn bench.quiet_app:app
"""

from __future__ import annotations

import anyio
from pydantic import BaseModel, Field

from app.agent.tools.base import Tool, ToolContext
from app.main import create_app


class Seconds(BaseModel):
    seconds: float = Field(ge=0, le=600)


async def wait(data: Seconds, _: ToolContext) -> str:
    await anyio.sleep(data.seconds)
    return f"waited {data.seconds:g} s"


WAIT = Tool("wait", "Waits that many seconds.", Seconds, wait, timeout=610, untrusted_output=False)
app = create_app(extra_tools=[WAIT])
