"""A turn answered as one response: executed under a watch on the client, recorded, then answered.

Each door renders the finished turn its own way (`answer`); this is what they share. The turn
executes inside the response (after the route returned), so its phase 3 still has the request's
transaction opener: that dependency exits only once the response has been sent.
"""

from __future__ import annotations

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.core.asgi import DisconnectWatch
from app.core.errors import AppError
from app.turns.turn import Turn, TurnEvent, not_saved


class TurnJSONResponse(Response):
    """Answers once the turn is over: 200 with the door's body (`answer`), or the mapped error status."""

    def __init__(self, turn: Turn) -> None:
        super().__init__()
        self.turn = turn
        self._ready: Response | None = None  # the answer, rendered while phase 3's statement was in flight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def ignore(_: TurnEvent) -> None:
            return None

        turn = self.turn
        try:
            async with turn.holding_lock():
                try:
                    async with DisconnectWatch(receive, on_leave=turn.mark_client_left) as watch:
                        await turn.execute(ignore)
                finally:
                    await turn.record(while_storing=self._render_ahead)
            if watch.client_left:
                return  # the client has gone; there is no one to tell
            error = turn.error if turn.saved else turn.error or not_saved()
            answer = self._ready if error is None and self._ready is not None else self.answer(turn, error)
            await answer(scope, receive, send)
        finally:
            turn.report()

    def _render_ahead(self) -> None:
        """The answer, rendered while the database stores it, not after: it is what the client gets
        if the outcome is stored (the turn's fields are final once phase 2 has ended)."""
        if self.turn.error is not None:
            return
        try:
            self._ready = self.answer(self.turn, None)
        except Exception:  # rendered again once stored, where the error reaches the error handler
            self._ready = None

    def answer(self, turn: Turn, error: AppError | None) -> Response:
        raise NotImplementedError  # each door's own body
