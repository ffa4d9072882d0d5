"""The model provider's failures, as the statuses this service answers with."""

from __future__ import annotations

from collections.abc import Mapping

from app.core.errors import AppError


def retry_after(headers: Mapping[str, str], default: str) -> str:
    """The provider's Retry-After when it is a plain number of seconds, else our default."""
    value = headers.get("retry-after")
    return value if value and value.replace(".", "", 1).isdigit() else default


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
