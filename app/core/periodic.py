"""Background work the app does now and then (sweeps), each loop a task owned by its block."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import structlog

log = structlog.get_logger(__name__)


@asynccontextmanager
async def periodically(work: Callable[[], Awaitable[object]], every: float, *, failed: str) -> AsyncIterator[None]:
    """Run `work` at once and then every `every` seconds while the block runs. A pass that fails is
    logged as `failed` (the database may be down a while) and the next one catches up."""

    async def loop() -> None:
        while True:
            try:
                await work()
            except Exception as exc:
                log.warning(failed, error=type(exc).__name__)
            await anyio.sleep(every)

    async with anyio.create_task_group() as group:
        group.start_soon(loop)
        try:
            yield
        finally:
            group.cancel_scope.cancel()
