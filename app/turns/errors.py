"""Errors of the chat door: Idempotency-Key misuse."""

from __future__ import annotations

from app.core.errors import AppError, Conflict


class IdempotencyInProgress(Conflict):
    type, default_message = "idempotency_in_progress", "A request with this Idempotency-Key is still running."


class IdempotencyKeyReused(AppError):
    status_code, type = 422, "idempotency_key_reused"
    default_message = "This Idempotency-Key was used with a different request body."
