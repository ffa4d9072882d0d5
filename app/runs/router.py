"""Rejoin a streamed turn from any replica, or cancel it."""

from __future__ import annotations

import contextlib
import uuid
from typing import Annotated

from fastapi import APIRouter, Header, Query, status
from redis.exceptions import RedisError
from starlette.responses import JSONResponse, Response

from app.auth.deps import CurrentPrincipal
from app.auth.errors import KEY_RESPONSES
from app.core import telemetry
from app.core.errors import ServiceBusy, ServiceUnavailable, responses
from app.runs.deps import FollowersDep, RunsDep
from app.runs.errors import RunFinished, RunNotFound, TooManyFollowers
from app.runs.manager import RunManager
from app.runs.responses import RunStreamResponse, StoredRunStreamResponse
from app.state import SettingsDep

# Every route takes a key: the key's errors are declared once, here.
router = APIRouter(prefix="/runs", tags=["runs"], responses=KEY_RESPONSES)


async def _locate(runs: RunManager, run_id: uuid.UUID, owner: uuid.UUID) -> tuple[bool, str]:
    """(is it running here, its state), or RunNotFound — also for another owner's run."""
    local = runs.runs.get(run_id)
    if local is not None:
        if local.owner_id != owner:
            raise RunNotFound()
        return True, "finished" if local.finished else "running"
    if runs.store is None:
        raise RunNotFound()
    try:
        found = await runs.find(run_id)
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable("The run's event log is unavailable.") from exc
    if found is None or found[0] != owner:
        raise RunNotFound()
    return False, found[1]


# Event ids are a run's sequence numbers (1, 2, 3…): ASCII digits, far below this bound. The bound
# keeps int() and Redis stream ids safe from a header of thousands of digits (a 422, not a 500).
MAX_EVENT_ID_DIGITS = 15
After = Annotated[int | None, Query(ge=0, lt=10**MAX_EVENT_ID_DIGITS, description="Replay events after this id.")]
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        pattern=f"^[0-9]{{1,{MAX_EVENT_ID_DIGITS}}}$",
        description="The id of the last event you received (as sent in `id:`); replay starts after it.",
    ),
]


@router.get(
    "/{run_id}/events",
    responses={
        **responses(RunNotFound, TooManyFollowers, ServiceUnavailable, ServiceBusy),
        200: {"content": {"text/event-stream": {}}},
    },
)
async def run_events(
    run_id: uuid.UUID,
    principal: CurrentPrincipal,
    settings: SettingsDep,
    runs: RunsDep,
    followers: FollowersDep,
    after: After = None,
    last_event_id: LastEventId = None,
) -> Response:
    """Replay a run's events after `Last-Event-ID` (or `?after=`), then follow it live."""
    here, _ = await _locate(runs, run_id, principal.owner_id)
    if telemetry.active() is not None and runs.store is not None:  # this span links to the run's trace
        with contextlib.suppress(RedisError, OSError):
            # A run held here carries its trace: its registration may not have reached Redis yet.
            traceparent = runs.runs[run_id].traceparent if here else await runs.store.traceparent(run_id)
            telemetry.link_current_span(traceparent, "run")
    start = after if after is not None else int(last_event_id or 0)
    ticket = followers.admit(principal.owner_id, remote=not here)  # released when the stream ends
    if here:
        return RunStreamResponse(
            runs.runs[run_id],
            ping_seconds=settings.sse_ping_seconds,
            after=start,
            cancel_on_disconnect=False,
            ticket=ticket,
        )
    assert runs.store is not None
    return StoredRunStreamResponse(
        runs.store, run_id, ping_seconds=settings.sse_ping_seconds, after=start, ticket=ticket
    )


@router.post(
    "/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    responses=responses(RunNotFound, RunFinished, ServiceUnavailable),
)
async def cancel_run(run_id: uuid.UUID, principal: CurrentPrincipal, runs: RunsDep) -> JSONResponse:
    """Stop a run, wherever it is running. Its partial answer is recorded."""
    _, state = await _locate(runs, run_id, principal.owner_id)
    if state == "finished":
        raise RunFinished()
    try:
        await runs.cancel(run_id, "cancelled")
    except (RedisError, OSError) as exc:
        raise ServiceUnavailable("Could not reach the replica running this turn.") from exc
    return JSONResponse({"run_id": str(run_id), "status": "cancelling"}, status_code=202)
