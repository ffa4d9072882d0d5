"""Graceful shutdown: on SIGTERM, drain.

Readiness turns 503 and new turns are refused at once; turns in flight get SHUTDOWN_GRACE_SECONDS
to finish; then the rest are interrupted (their partial answers recorded, their clients told
`shutdown`). uvicorn's own graceful timeout must be longer, so our drain ends first.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, Protocol

import structlog

log = structlog.get_logger(__name__)


class Interruptible(Protocol):
    def interrupt_for_shutdown(self) -> None: ...
    def interrupt(self, key: object, reason: str) -> bool: ...


class Lifecycle:
    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.draining = False
        self._turns: set[Interruptible] = set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        return len(self._turns)

    @contextmanager
    def track(self, turn: Interruptible) -> Iterator[None]:
        self._turns.add(turn)
        try:
            yield
        finally:
            self._turns.discard(turn)

    def interrupt(self, key: object, reason: str) -> bool:
        """Interrupt the turn in flight here that `key` names (its answer's id), for `reason`."""
        return any(turn.interrupt(key, reason) for turn in list(self._turns))

    def begin_drain(self) -> None:
        """Called on the event loop. Idempotent."""
        if self.draining:
            return
        self.draining = True
        log.info("app.draining", in_flight=self.in_flight, grace_seconds=self.grace_seconds)
        self._timer = asyncio.get_running_loop().call_later(self.grace_seconds, self.interrupt_all)

    def interrupt_all(self) -> None:
        if self._turns:
            log.warning("app.drain.interrupting", turns=len(self._turns))
        for turn in list(self._turns):
            turn.interrupt_for_shutdown()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


@contextmanager
def drain_on_sigterm(lifecycle: Lifecycle) -> Iterator[None]:
    """Chain our drain in front of the server's SIGTERM handler (uvicorn's, when it runs us).

    We set uvicorn's `should_exit` rather than call its handler: its handler records the signal
    and re-raises it after shutdown, which would end a clean drain with status 143 instead of 0.
    """
    loop = asyncio.get_running_loop()
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:  # not the main thread: signals are not ours to handle
        yield
        return
    server = getattr(previous, "__self__", None)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if lifecycle.draining:  # a second SIGTERM: let the server force its way out
            if callable(previous):
                previous(signum, frame)
            return
        loop.call_soon_threadsafe(lifecycle.begin_drain)
        if server is not None and hasattr(server, "should_exit"):
            server.should_exit = True
        elif callable(previous):
            previous(signum, frame)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, _restore(previous))


def _restore(previous: Any) -> Any:
    return previous if previous is not None else signal.SIG_DFL
