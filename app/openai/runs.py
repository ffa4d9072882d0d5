"""Where a response's run is (this replica, another's event log, none), and waiting for it to settle."""

from __future__ import annotations

import uuid

import anyio
from redis.exceptions import RedisError

from app.runs.manager import Run, RunManager
from app.runs.store import RunStore

CANCEL_WAIT_SECONDS = 5.0


async def run_of(runs: RunManager, message_id: uuid.UUID, owner: uuid.UUID) -> Run | RunStore | None:
    """The response's run: here, in another replica's event log, or none (finished long ago, or not a run)."""
    local = runs.runs.get(message_id)
    if local is not None:
        return local if local.owner_id == owner else None
    if runs.store is None:
        return None
    try:
        found = await runs.find(message_id)
    except (RedisError, OSError):
        return None  # the stored answer still answers
    return runs.store if found is not None and found[0] == owner else None


async def settled(runs: RunManager, message_id: uuid.UUID) -> None:
    """Wait (bounded) until a cancelled run has recorded its answer, here or on another replica."""
    with anyio.move_on_after(CANCEL_WAIT_SECONDS):
        while True:
            local = runs.runs.get(message_id)
            if local is not None:
                if local.finished:
                    return
                await local.wait_beyond(len(local.events), 0.5)
                continue
            # Found before it was cancelled: its meta is in Redis (no need to wait for a first slice).
            found = await runs.store.owner(message_id) if runs.store is not None else None
            if found is None or found[1] == "finished":
                return
            await anyio.sleep(0.05)
