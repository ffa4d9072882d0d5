"""Run events and their Server-Sent Events encoding."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

TERMINAL = frozenset({"end", "error"})


@dataclass(frozen=True, slots=True)
class RunEvent:
    seq: int
    event: str
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL

    def sse(self) -> bytes:
        payload = json.dumps(self.data, separators=(",", ":"), ensure_ascii=False)
        return f"id: {self.seq}\nevent: {self.event}\ndata: {payload}\n\n".encode()

    def fields(self) -> dict[str, str]:
        return {"event": self.event, "data": json.dumps(self.data, separators=(",", ":"))}

    @classmethod
    def from_fields(cls, seq: int, fields: dict[bytes, bytes]) -> RunEvent:
        return cls(seq, fields[b"event"].decode(), json.loads(fields[b"data"]))


PING = b": ping\n\n"
