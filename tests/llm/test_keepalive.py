"""The model client's pooled connections against an upstream's keep-alive timeout.

An upstream closes a connection left idle past its keep-alive (uvicorn: 5 s after its answer). A
call the client sends on that connection as the server closes it fails: neither aiohttp nor
httpcore2 resends a POST, so with retries off it is an upstream error (502). The race needs the
server's close and our request to cross; the scripted server below makes the crossing exact: a
request that comes `KEEP_ALIVE` or more after the connection's last answer finds it closed, as if
the server's timer had fired while the request was on its way.
"""

from __future__ import annotations

import asyncio
import time

from app.llm.errors import UpstreamError
from tests.llm.test_model_client import CLIENTS, Answer, answer_of, model, serving, text_of, with_length

# The upstream's keep-alive as the client meets it: uvicorn's 5 s less what the client's idle clock
# lags behind the server's (the answer's last bytes in flight, a busy loop in a burst), and more
# than the pool's expiry (app/llm/anthropic.py: KEEPALIVE_EXPIRY). httpx2's default, 5 s, reused
# the connection here.
KEEP_ALIVE = 4.5


def keep_alive(seconds: float) -> Answer:
    """Answers each request, except one that comes `seconds` or more after its connection's last
    answer: that one the server hangs up on, unanswered."""
    answered: dict[asyncio.StreamWriter, float] = {}  # a connection -> when its last answer went out

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter, __: int) -> bool:
        last = answered.get(writer)
        if last is not None and time.monotonic() - last >= seconds:
            return False
        writer.write(with_length())
        await writer.drain()
        answered[writer] = time.monotonic()
        return True

    return answer


def causes(exc: BaseException | None) -> str:
    """An error and what it came from, down to the transport's own."""
    found = []
    while exc is not None:
        found.append(f"{type(exc).__module__}.{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(found)


async def test_a_call_on_a_connection_the_upstream_is_closing_gets_its_answer() -> None:
    """One call, then the next one as the upstream's keep-alive ends, with retries off: both answered."""

    async def two_calls(url: str, kind: str) -> str:
        async with model(url, kind) as client:  # LLM_MAX_RETRIES=0
            assert text_of(await answer_of(client)) == "Hello there"
            await asyncio.sleep(KEEP_ALIVE)  # the server's clock started before ours: it is at KEEP_ALIVE or past
            try:
                return text_of(await answer_of(client))
            except UpstreamError as exc:
                return causes(exc)

    async with serving(keep_alive(KEEP_ALIVE)) as server:
        outcomes = await asyncio.gather(*(two_calls(server.url, kind) for kind in CLIENTS))
    assert dict(zip(CLIENTS, outcomes, strict=True)) == dict.fromkeys(CLIENTS, "Hello there")
