"""Run events and their Server-Sent Events encoding: each event is encoded once, when published."""

from __future__ import annotations

import json
from json.encoder import encode_basestring  # the C encoder of a JSON string, as json.dumps(ensure_ascii=False) uses
from typing import Any

# A run's last event: /chat's names, and those of the OpenAI Responses stream (app/openai/), whose
# runs publish its events as they are so that replaying the log is replaying that stream.
TERMINAL = frozenset({"end", "error", "response.completed", "response.incomplete", "response.failed"})
# json.dumps with non-default separators builds a new encoder per call: one encoder, built once.
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def text_payload(text: str) -> str:
    """`{"text": text}` as json.dumps(..., separators=(",", ":"), ensure_ascii=False) writes it, from a
    template: a delta's one field, without a pass of the general encoder per delta (issue #28)."""
    return '{"text":' + encode_basestring(text) + "}"


class RunEvent:
    """One event of a run. `payload` (its JSON) and `frame` (its SSE bytes) are made once, here."""

    __slots__ = ("seq", "event", "data", "payload", "frame", "terminal")

    def __init__(self, seq: int, event: str, data: dict[str, Any], payload: str | None = None) -> None:
        self.seq, self.event, self.data = seq, event, data
        self.payload = payload if payload is not None else _dumps(data)
        self.frame = f"id: {seq}\nevent: {event}\ndata: {self.payload}\n\n".encode()
        self.terminal = event in TERMINAL

    def __repr__(self) -> str:
        return f"RunEvent({self.seq}, {self.event!r}, {self.data!r})"

    def sse(self) -> bytes:
        return self.frame

    def fields(self) -> dict[str, str]:
        return {"event": self.event, "data": self.payload}

    @classmethod
    def from_fields(cls, seq: int, fields: dict[bytes, bytes]) -> RunEvent:
        payload = fields[b"data"].decode()
        return cls(seq, fields[b"event"].decode(), json.loads(payload), payload)
