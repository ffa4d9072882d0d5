"""Errors of agent selection."""

from __future__ import annotations

from app.core.errors import AppError, Conflict


class AgentNotFound(AppError):
    status_code, type = 404, "agent_not_found"
    default_message = "There is no such agent that this key may use."

    def __init__(self, name: str) -> None:
        super().__init__(f"There is no agent named {name[:64]!r} that this key may use.")


class AgentMismatch(AppError):
    status_code, type = 422, "agent_mismatch"
    default_message = "This conversation is bound to another agent."

    def __init__(self, bound: str) -> None:
        super().__init__(f"This conversation is bound to the agent {bound!r}; omit `agent` or name that one.")


class AgentUnavailable(Conflict):
    type = "agent_unavailable"
    default_message = "This conversation's agent is no longer configured."

    def __init__(self, bound: str) -> None:
        super().__init__(f"This conversation's agent {bound!r} is no longer configured; its history stays readable.")
