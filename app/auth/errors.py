"""Errors of per-key limits."""

from __future__ import annotations

from app.core.errors import RateLimited


class TokenQuotaExceeded(RateLimited):
    type, default_message = "token_quota_exceeded", "This key has used its tokens for today."


class TooManyTurns(RateLimited):
    type, default_message = "too_many_turns", "This key has too many turns in flight; retry when one ends."
