"""Errors of starting a turn: Idempotency-Key misuse, a tool result that answers no call."""

from __future__ import annotations

from app.core.errors import AppError, Conflict


class IdempotencyInProgress(Conflict):
    type, default_message = "idempotency_in_progress", "A request with this Idempotency-Key is still running."


class IdempotencyKeyReused(AppError):
    status_code, type = 422, "idempotency_key_reused"
    default_message = "This Idempotency-Key was used with a different request body."


class ToolResultUnmatched(AppError):
    """A turn's tool result answers no call that the answer it continues left open."""

    status_code, type = 400, "invalid_value"

    def __init__(self, call_id: str) -> None:
        super().__init__(f"No call with the id {call_id!r} is waiting for its result in the response this continues.")
        self.call_id = call_id


class NotPending(Conflict):
    """A decision for a call that is not waiting for one (decided already, timed out, never paused)."""

    type, default_message = "not_pending", "No such tool call is waiting for a decision."


class UndecidedCalls(AppError):
    status_code, type = 422, "undecided_calls"
    default_message = "Every pending tool call needs a decision."


class NoLongerQueued(AppError):
    status_code, type = 409, "no_longer_queued"
    default_message = "The message is no longer queued: another run answered it, or its conversation was deleted."
