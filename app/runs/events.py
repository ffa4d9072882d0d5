"""Run events and their Server-Sent Events encoding: each event is encoded once, when published."""

from __future__ import annotations

import json
from typing import Any

# A run's last event: /chat's names, and those of the OpenAI Responses stream (app/openai/), whose
# runs publish its events as they are so that replaying the log is replaying that stream.
TERMINAL = frozenset({"end", "error", "response.completed", "response.incomplete", "response.failed"})


class RunEvent:
    """One event of a run. `payload` (its JSON) and `frame` (its SSE bytes) are made once, here."""

    __slots__ = ("seq", "event", "data", "payload", "frame")

    def __init__(self, seq: int, event: str, data: dict[str, Any], payload: str | None = None) -> None:
        self.seq, self.event, self.data = seq, event, data
        self.payload = payload if payload is not None else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        self.frame = f"id: {seq}\nevent: {event}\ndata: {self.payload}\n\n".encode()

    def __repr__(self) -> str:
        return f"RunEvent({self.seq}, {self.event!r}, {self.data!r})"

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL

    def sse(self) -> bytes:
        return self.frame

    def fields(self) -> dict[str, str]:
        return {"event": self.event, "data": self.payload}

    @classmethod
    def from_fields(cls, seq: int, fields: dict[bytes, bytes]) -> RunEvent:
        payload = fields[b"data"].decode()
        return cls(seq, fields[b"event"].decode(), json.loads(payload), payload)
