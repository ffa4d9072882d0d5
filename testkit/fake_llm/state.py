"""What the fake remembers: counters, recorded request bodies, rejections."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from testkit.fake_llm.content import JSONDict
from testkit.fake_llm.context_management import Compactions

MAX_RECORDED_REQUESTS = 1000


@dataclass
class FakeLLMState:
    """Everything the fake remembers. One instance per app, safe to read from any thread."""

    require_openai_key: bool = False
    request_count: int = 0
    open_streams: int = 0
    max_open_streams: int = 0
    closed_by_client: int = 0
    recorded_requests: deque[JSONDict] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED_REQUESTS))
    # Each request's W3C `traceparent` header (None: it had none), most recent last.
    traceparents: deque[str | None] = field(default_factory=lambda: deque(maxlen=MAX_RECORDED_REQUESTS))
    # Reasons for every 400/401 the fake produced by itself (not by a directive).
    rejections: list[str] = field(default_factory=list)
    # How often each exact last-user text was seen, for [[fail_first]].
    fail_counts: dict[str, int] = field(default_factory=dict)
    # The compaction blocks this fake returned (context management), to check them when sent back.
    compactions: Compactions = field(default_factory=Compactions)
    # Set when the server shuts down, so hanging/slow responses give up promptly.
    stopping: threading.Event = field(default_factory=threading.Event)
    # The server runs on its own thread; tests read and reset from theirs.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, body: JSONDict | None, *, traceparent: str | None = None) -> None:
        with self.lock:
            self.request_count += 1
            self.traceparents.append(traceparent)
            if body is not None:
                self.recorded_requests.append(body)

    def reject(self, reason: str) -> None:
        with self.lock:
            self.rejections.append(reason)

    def bump_fail_count(self, key: str) -> int:
        with self.lock:
            self.fail_counts[key] = self.fail_counts.get(key, 0) + 1
            return self.fail_counts[key]

    def stream_opened(self) -> None:
        with self.lock:
            self.open_streams += 1
            self.max_open_streams = max(self.max_open_streams, self.open_streams)

    def stream_closed(self, *, by_client: bool) -> None:
        with self.lock:
            self.open_streams -= 1
            if by_client:
                self.closed_by_client += 1

    def request_bodies(self) -> list[JSONDict]:
        """A copy of the recorded request bodies, most recent last."""
        with self.lock:
            return list(self.recorded_requests)

    def stats(self) -> JSONDict:
        with self.lock:
            return {
                "requests": self.request_count,
                "open_streams": self.open_streams,
                "max_open_streams": self.max_open_streams,
                "closed_by_client": self.closed_by_client,
                "rejections": list(self.rejections),
            }

    def reset(self) -> None:
        with self.lock:
            self.request_count = 0
            # Streams still being written stay counted, or the gauge would go negative.
            self.max_open_streams = self.open_streams
            self.closed_by_client = 0
            self.recorded_requests.clear()
            self.traceparents.clear()
            self.rejections.clear()
            self.fail_counts.clear()
            self.compactions.clear()
