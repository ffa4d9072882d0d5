"""Response plumbing: an ASGI response played as steps (bytes, pauses, aborts), and SSE framing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.types import Receive, Scope, Send

from testkit.fake_llm.content import JSONDict
from testkit.fake_llm.state import FakeLLMState


@dataclass(frozen=True)
class Pause:
    """Sleep in the middle of a response; ``math.inf`` hangs until disconnect or shutdown."""

    seconds: float


class Abort:
    """Kill the connection at this point, without finishing the response."""


Step = bytes | Pause | Abort


class _Aborted(Exception):
    pass


class DropConnection(Exception):
    """Raised out of the ASGI app so uvicorn closes the socket mid-response."""


class PlannedResponse:
    """An ASGI response that plays a list of steps and watches for the client going away.

    ``before_headers`` runs first (delays, hangs), then the status line and headers
    are sent, then ``body``. While it runs, a watcher task listens for
    ``http.disconnect`` so a hanging or slow response notices a vanished client.
    """

    def __init__(
        self,
        state: FakeLLMState,
        *,
        status: int,
        headers: dict[str, str],
        body: list[Step],
        before_headers: Iterable[Pause] = (),
        is_stream: bool = False,
    ) -> None:
        self.state = state
        self.status = status
        self.headers = dict(headers)
        if not is_stream:  # a plain JSON answer goes out with a length, like the real API's
            self.headers["content-length"] = str(sum(len(step) for step in body if isinstance(step, bytes)))
        self.body = body
        self.before_headers = list(before_headers)
        self.is_stream = is_stream
        self._finished = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client_gone = False
        aborted = False
        if self.is_stream:
            self.state.stream_opened()
        try:
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    nonlocal client_gone
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    # uvicorn also reports a disconnect once the response is complete.
                    if not self._finished:
                        client_gone = True
                        tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                try:
                    await self._play(send)
                except _Aborted:
                    aborted = True
                except OSError:  # some servers raise on send after a disconnect
                    client_gone = True
                tg.cancel_scope.cancel()
        finally:
            if self.is_stream:
                self.state.stream_closed(by_client=client_gone)
        if aborted and not client_gone:
            raise DropConnection("fake LLM server dropped the connection on purpose")

    async def _play(self, send: Send) -> None:
        for pause in self.before_headers:
            await self._pause(pause.seconds)
        raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items()]
        await send({"type": "http.response.start", "status": self.status, "headers": raw_headers})
        for step in self.body:
            if isinstance(step, Pause):
                await self._pause(step.seconds)
            elif isinstance(step, Abort):
                raise _Aborted
            else:
                await send({"type": "http.response.body", "body": step, "more_body": True})
        self._finished = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pause(self, seconds: float) -> None:
        # Sleep in short slices so a server shutdown interrupts hangs promptly.
        deadline = time.monotonic() + seconds
        while True:
            if self.state.stopping.is_set():
                raise _Aborted
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await anyio.sleep(min(remaining, 0.05))


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _sse(event: str, data: JSONDict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _sse_data(data: JSONDict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def _cut_after_deltas(steps: list[Step], delta_positions: list[int], tail: list[Step], keep: int = 2) -> list[Step]:
    """Keep the stream up to its ``keep``-th text delta, then append ``tail``."""
    if len(delta_positions) >= keep:
        cut = delta_positions[keep - 1] + 1
    elif delta_positions:
        cut = delta_positions[-1] + 1
    else:
        cut = 1  # just the opening event
    return steps[:cut] + tail
