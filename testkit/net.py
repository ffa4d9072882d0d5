"""Network helpers for tests and benchmarks."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port that was free a moment ago.

    Small race between close and the caller's bind; acceptable on loopback. To avoid it, bind the
    socket yourself and hand it over (as ``FakeLLMServer.start`` does).
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
