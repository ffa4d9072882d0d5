"""The model provider's failures, as the statuses this service answers with."""

from __future__ import annotations

from app.core.errors import AppError


class UpstreamError(AppError):
    """The model provider failed; subclasses map its failure to our status."""

    status_code, type, default_message = 502, "upstream_error", "The model provider failed."


class UpstreamRateLimited(UpstreamError):
    status_code, type, default_message = 429, "upstream_rate_limited", "The model provider is rate limiting."


class UpstreamOverloaded(UpstreamError):
    status_code, type, default_message = 503, "upstream_overloaded", "The model provider is overloaded."


class UpstreamTimeout(UpstreamError):
    status_code, type, default_message = 504, "upstream_timeout", "The model provider timed out."


class UpstreamRejected(UpstreamError):
    """The provider refused the request itself (4xx other than 429): our bug or bad config."""

    status_code, type, default_message = 502, "upstream_rejected", "The model provider rejected the request."
