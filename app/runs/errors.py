"""Run errors."""

from __future__ import annotations

from app.core.errors import Conflict, NotFound, RateLimited


class RunNotFound(NotFound):
    default_message = "Run not found (or its events have expired)."


class RunFinished(Conflict):
    type, default_message = "run_finished", "The run has already finished."


class TooManyFollowers(RateLimited):
    type, default_message = "too_many_followers", "Too many run streams are open for this key."
