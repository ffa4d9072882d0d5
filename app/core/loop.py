"""Event-loop lag: how late a timer fires is how long every ready task is waiting for its turn.

Operators see it on /metrics (agentchat_event_loop_lag_seconds) before latency shows saturation;
admission uses the latest reading to refuse new turns cheaply while the loop cannot keep up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.core.metrics import Metrics

INTERVAL = 0.1


class LoopLag:
    def __init__(self, metrics: Metrics, interval: float = INTERVAL) -> None:
        self.metrics, self.interval = metrics, interval
        self.latest = 0.0  # seconds, from the most recent tick

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        observe = self.metrics.loop_lag.observe
        while True:
            planned = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.latest = max(0.0, loop.time() - planned)
            observe(self.latest)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[LoopLag]:
        """Watch the loop for as long as the block runs.

        The block owns the task. Not a task group: an error raised in the block (a failed start-up)
        must leave it as itself, not wrapped in an ExceptionGroup.
        """
        task = asyncio.create_task(self._watch(), name="loop-lag")
        try:
            yield self
        finally:
            task.cancel()
            await asyncio.wait({task})  # its CancelledError stays in it; ours, if any, propagates
