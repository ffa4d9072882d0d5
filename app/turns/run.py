"""The adapter from a turn to a run: execute it in the app's run, publish its events in a door's format."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from app.runs.manager import Run
from app.turns.turn import Turn, TurnEnded, TurnEvent, TurnFailed, not_saved


class RunPublisher(Protocol):
    """How a door turns a turn's events into run events (its wire format's names and fields).

    `interrupted` closes a run that stopped before the turn's last event (cancelled, client gone).
    """

    def start(self, turn: Turn, run: Run) -> None: ...
    def event(self, turn: Turn, event: TurnEvent, run: Run) -> None: ...
    def interrupted(self, turn: Turn, run: Run) -> None: ...


def as_run(turn: Turn, publisher: RunPublisher) -> Callable[[Run], Awaitable[None]]:
    """What a run does: execute the turn, publish its events, record its outcome before the last event."""

    async def drive(run: Run) -> None:
        # A run may outlive the request that started it: from here the turn opens its transactions
        # from the run's own opener (the same provider), entered and closed in the run's task.
        async with turn.transactions.db.transactions() as transactions:
            turn.transactions = transactions
            await _drive(run)

    async def _drive(run: Run) -> None:
        publisher.start(turn, run)

        async def emit(event: TurnEvent) -> None:
            # Stored before anyone hears the end, so a client's next turn sees this one; and an
            # outcome that could not be stored is never announced as complete.
            if isinstance(event, TurnEnded | TurnFailed) and not await turn.record() and isinstance(event, TurnEnded):
                event = TurnFailed(not_saved())
            publisher.event(turn, event, run)

        async with turn.holding_lock():
            try:
                with run.scope:
                    await turn.execute(emit)
            finally:
                turn.interrupted_by = run.cancelled_by
                await turn.record()
                if not run.finished:
                    publisher.interrupted(turn, run)
                turn.report()

    return drive
