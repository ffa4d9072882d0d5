"""DisconnectWatch: a client's disconnect cancels the watched block (only it), and nothing else is swallowed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.core.asgi import DisconnectWatch


class Client:
    """An ASGI `receive` whose disconnect the test triggers."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}


async def test_a_disconnect_ends_the_block_and_is_remembered() -> None:
    client, left = Client(), []
    reached_the_end = False
    async with DisconnectWatch(client.receive, lambda: left.append(True)) as watch:
        client.gone.set()
        await asyncio.sleep(5)
        reached_the_end = True
    assert (watch.client_left, left, reached_the_end) == (True, [True], False)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # nothing left pending
    await asyncio.sleep(0)  # and the task goes on


async def test_a_block_that_ends_first_is_not_cancelled_later() -> None:
    client = Client()
    async with DisconnectWatch(client.receive) as watch:
        await asyncio.sleep(0)
    client.gone.set()
    await asyncio.sleep(0.05)  # a disconnect now reaches no one
    assert not watch.client_left


async def test_an_outer_cancel_goes_on_up_even_when_the_client_left_too() -> None:
    client = Client()

    async def handler() -> None:
        async with DisconnectWatch(client.receive):
            await asyncio.sleep(5)

    task = asyncio.create_task(handler())
    await asyncio.sleep(0.01)
    task.cancel()  # a shutdown, say
    client.gone.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_outer_timeout_still_fires_inside_the_watch() -> None:
    client = Client()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05), DisconnectWatch(client.receive):
            await asyncio.sleep(5)


async def test_a_failing_receive_ends_only_the_watch(capsys: pytest.CaptureFixture[str]) -> None:
    async def broken() -> dict[str, Any]:
        raise RuntimeError("the server's own error")

    async with DisconnectWatch(broken) as watch:
        await asyncio.sleep(0.01)
    assert not watch.client_left
    logged = capsys.readouterr()
    assert "http.disconnect_watch_failed" in logged.out + logged.err  # wherever logging is set up to write
