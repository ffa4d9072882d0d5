"""Errors of API keys and their per-key limits, and the OpenAPI declaration of a keyed route's."""

from __future__ import annotations

from app.core.errors import DatabaseUnavailable, RateLimited, ServiceBusy, Unauthorized, responses


class TokenQuotaExceeded(RateLimited):
    type, default_message = "token_quota_exceeded", "This key has used its tokens for today."


class TooManyTurns(RateLimited):
    type, default_message = "too_many_turns", "This key has too many turns in flight; retry when one ends."


# What `require_api_key` (app/auth/deps.py) can answer on any route that takes a key: no key or a
# bad one, the per-minute limit, and the key's lookup finding the database down or its pool busy.
KEY_ERRORS = (Unauthorized, RateLimited, DatabaseUnavailable, ServiceBusy)
# For `APIRouter(responses=KEY_RESPONSES)`: a router whose routes all take a key declares them once.
KEY_RESPONSES = responses(*KEY_ERRORS)
