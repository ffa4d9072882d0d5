"""Shared test helpers: a live uvicorn server in the test's event loop, and small readers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import uvicorn
from fastapi import FastAPI
from sqlalchemy import text

from app.state import Resources, resources_of
from testkit.net import free_port


@dataclass
class Live:
    url: str
    server: uvicorn.Server
    app: FastAPI

    @property
    def state(self) -> Resources:
        return resources_of(self.app)

    def swap(self, **changes: Any) -> Resources:
        """Serve the next requests with some resources replaced (an app around other resources)."""
        self.app.state.resources = replace(self.state, **changes)
        return self.state


@asynccontextmanager
async def live_server(app: FastAPI) -> AsyncIterator[Live]:
    """Serve `app` with uvicorn on a free port in this event loop (real sockets, real disconnects)."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, lifespan="on", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(500):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield Live(f"http://127.0.0.1:{port}", server, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def eventually(predicate: Any, timeout: float = 3.0, interval: float = 0.02) -> None:  # noqa: ASYNC109
    """Wait until predicate() (sync or async) is truthy; fail with its last value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")
        await asyncio.sleep(interval)


async def pg_activity(sessions: Any, app_name: str) -> dict[str, int]:
    """Connections of one application_name by state, seen from a separate connection."""
    async with sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT state, count(*) FROM pg_stat_activity WHERE application_name = :n "
                    "AND pid <> pg_backend_pid() GROUP BY state"
                ),
                {"n": app_name},
            )
        ).all()
    return {str(state): int(count) for state, count in rows}


def sse_events(raw: str) -> list[dict[str, Any]]:
    events = []
    for chunk in raw.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in chunk.splitlines():
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        if "event" in fields:
            fields["data"] = json.loads(fields.get("data", "null"))
            events.append(fields)
    return events


def statements_sent(state: Resources) -> float:
    """SQL statements the app has sent so far (its agentchat_db_statements_total)."""
    return float(state.metrics.db_statements._value.get())
