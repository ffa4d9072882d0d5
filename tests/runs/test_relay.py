"""The relay from a run to its followers' sockets, pinned by counts (not timings): a live follower
costs no task wake-up per event, frames ready together go out in one write, a full client buffer
stalls nobody but that follower, and what was written replays byte for byte after any id."""

from __future__ import annotations

import asyncio
import json
import types
import uuid
from collections.abc import Generator
from typing import Any, cast

from redis.asyncio import Redis
from starlette.types import Message

from app.core.asgi import PING
from app.core.lifecycle import Lifecycle
from app.core.metrics import Metrics
from app.runs.events import RunEvent, text_payload
from app.runs.manager import MIRROR_INTERVAL, Run, RunManager
from app.runs.responses import RunStreamResponse
from app.runs.store import RunStore

SCOPE: dict[str, Any] = {"type": "http", "method": "GET", "path": "/"}


def new_run() -> Run:
    # No store: nothing is mirrored, so the manager is never reached.
    return Run(uuid.uuid4(), uuid.uuid4(), None, cast(RunManager, None))


class Client:
    """An ASGI server's side of one response: what was sent, and a client that stays until told."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.sends = 0  # body messages, empty ones too (each is a socket write on a real server)
        self.ended = False
        self.gone = asyncio.Event()
        self.paused: asyncio.Event | None = None  # set: the next body write waits for it (a full buffer)

    async def receive(self) -> Message:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] != "http.response.body":
            return
        self.sends += 1
        if self.paused is not None:
            await self.paused.wait()
        if message["body"]:
            self.writes.append(message["body"])
        if not message.get("more_body", False):
            self.ended = True

    @property
    def body(self) -> bytes:
        return b"".join(self.writes)


class Steps:
    """Awaits a coroutine, counting how often its task resumes it (its wake-ups)."""

    def __init__(self, coro: Any) -> None:
        self.coro, self.count = coro, 0

    @types.coroutine
    def run(self) -> Generator[Any, Any, None]:
        value: Any = None
        error: BaseException | None = None
        while True:
            self.count += 1
            try:
                waits_on = self.coro.send(value) if error is None else self.coro.throw(error)
            except StopIteration:
                return
            value, error = None, None
            try:
                value = yield waits_on
            except BaseException as exc:  # a cancel goes to the coroutine, as its task would send it
                error = exc


def follow(run: Run, client: Client, *, after: int = 0, ping: float = 60.0) -> tuple[Steps, asyncio.Task[None]]:
    response = RunStreamResponse(run, ping_seconds=ping, after=after, cancel_on_disconnect=False)
    steps = Steps(response(SCOPE, client.receive, client.send))

    async def go() -> None:
        await steps.run()

    return steps, asyncio.get_running_loop().create_task(go())


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def ids(body: bytes) -> list[int]:
    return [int(line[4:]) for line in body.split(b"\n") if line.startswith(b"id: ")]


async def test_a_paced_stream_wakes_its_follower_a_bounded_number_of_times() -> None:
    for n in (20, 200):
        run, client = new_run(), Client()
        run.publish("start", {})
        steps, task = follow(run, client)
        await settle()
        for i in range(n):
            run.publish("delta", {"text": f"w{i} "})
            await settle()  # each delta on its own: as a model sends them, 10-50 ms apart
        run.publish("end", {})
        await asyncio.wait_for(task, 5)
        assert client.ended
        assert ids(client.body) == list(range(1, n + 3))
        # One write per delta (each came alone), plus `start` and `end`: none per event beyond that,
        # and the body's end goes with `end` (no empty write of its own).
        assert len(client.writes) == client.sends == n + 2
        # The follower's task is not woken per event: the same few steps for 20 deltas as for 200.
        assert steps.count <= 6, (n, steps.count)


async def test_frames_ready_together_go_out_in_one_write() -> None:
    run, client = new_run(), Client()
    steps, task = follow(run, client)
    await settle()
    run.publish("start", {})
    for i in range(10):
        run.publish("delta", {"text": f"w{i} "})  # one read of the model's stream with ten events
    await settle()
    assert len(client.writes) == 1
    assert ids(client.writes[0]) == list(range(1, 12))
    run.publish("end", {})
    await asyncio.wait_for(task, 5)
    assert len(client.writes) == 2


async def test_what_was_written_live_replays_byte_for_byte_after_any_id() -> None:
    run, live = new_run(), Client()
    _, task = follow(run, live)
    await settle()
    run.publish("start", {"run_id": "r"})
    for burst in ([1], [2, 3, 4], [5], [6, 7]):  # some alone, some coalesced into one write
        for i in burst:
            run.publish("delta", {"text": f"é{i}\n"})
        await settle()
    run.publish("tool_use", {"id": "t", "name": "calculator", "input": {"expression": "1+1"}})
    run.publish("end", {"stop_reason": "end_turn"})
    await asyncio.wait_for(task, 5)
    assert len(live.writes) < len(run.events)  # some frames did share a write
    frames = live.body.split(b"\n\n")[:-1]
    assert ids(live.body) == list(range(1, len(run.events) + 1))
    for after in range(len(run.events) + 1):
        again = Client()
        _, replay = follow(run, again, after=after)
        await asyncio.wait_for(replay, 5)
        assert again.body == b"".join(f + b"\n\n" for f in frames[after:]), after


async def test_a_client_with_a_full_buffer_stalls_only_its_own_stream() -> None:
    run, client = new_run(), Client()
    _, task = follow(run, client)
    await settle()
    run.publish("start", {})
    await settle()
    client.paused = asyncio.Event()  # the client stops reading: the next write waits
    for i in range(5):
        run.publish("delta", {"text": f"w{i}"})  # the publisher never waits for it
        await settle()
    assert ids(client.body) == [1]
    client.paused.set()  # it reads again: the follower catches up, in order, nothing twice
    client.paused = None
    await settle()
    run.publish("end", {})
    await asyncio.wait_for(task, 5)
    assert ids(client.body) == list(range(1, 8))


async def test_a_second_follower_hears_everything_too() -> None:
    run, first, second = new_run(), Client(), Client()
    _, one = follow(run, first)
    _, two = follow(run, second)
    await settle()
    for i in range(5):
        run.publish("delta", {"text": f"w{i}"})
        await settle()
    run.publish("end", {})
    await asyncio.wait_for(asyncio.gather(one, two), 5)
    assert first.body == second.body
    assert ids(first.body) == list(range(1, 7))


async def test_a_quiet_live_stream_is_pinged_and_then_follows_on() -> None:
    run, client = new_run(), Client()
    run.publish("start", {})
    _, task = follow(run, client, ping=0.05)
    await asyncio.sleep(0.12)
    assert PING in client.writes
    run.publish("delta", {"text": "later"})
    run.publish("end", {})
    await asyncio.wait_for(task, 5)
    assert ids(client.body) == [1, 2, 3]


async def test_a_client_that_leaves_detaches_its_follower() -> None:
    run, client = new_run(), Client()
    run.publish("start", {})
    _, task = follow(run, client)
    await settle()
    assert run.direct is not None
    client.gone.set()
    await asyncio.wait_for(task, 5)
    assert run.direct is None
    run.publish("delta", {"text": "nobody hears this"})  # and publishing goes on regardless
    assert ids(client.body) == [1]


# --------------------------------------------------------------------------- the Redis mirror


class Counted:
    """Wraps the store's one mirror command: per call, how many runs it carried and how many arguments."""

    def __init__(self, store: RunStore) -> None:
        self.calls: list[tuple[int, int]] = []
        self._append = store._append
        store._append = self  # type: ignore[assignment]

    async def __call__(self, *, keys: list[bytes], args: list[bytes]) -> Any:
        self.calls.append(((len(keys) - 1) // 2, len(args)))
        return await self._append(keys=keys, args=args)


async def test_paced_runs_are_mirrored_one_command_per_slice_and_replay_exactly(redis_client: Redis) -> None:
    store = RunStore(redis_client, f"test-relay-{uuid.uuid4().hex[:8]}:", retention_seconds=60, max_events=10_000)
    mirror = Counted(store)
    deltas, texts = 12, ["é\n", 'say "hi"', "\\", "\x00\x1f", "\u2028", "🙂", "<b>", "plain"]
    released = asyncio.Event()

    async def held(run: Run) -> None:  # the test publishes the run's events
        await released.wait()

    async with RunManager(store, Lifecycle(1.0), Metrics()) as manager:
        runs = [await manager.start(uuid.uuid4(), uuid.uuid4(), held) for _ in range(3)]
        await asyncio.sleep(MIRROR_INTERVAL * 3)
        # Their registrations, in one slice: per run its head and meta (owner, state), and its one argument.
        assert mirror.calls == [(len(runs), 2 + len(runs) * (1 + 4 + 1))]
        mirror.calls.clear()
        # Listed among the running, as their registration lists them on a replica with leases.
        await redis_client.hset(store.running_key, mapping={str(run.id): "this replica" for run in runs})
        for run in runs:
            run.publish("start", {"run_id": str(run.id)})
        for i in range(deltas):
            for run in runs:  # three streams, each delta on its own, as a model paces them
                text = texts[i % len(texts)] + str(i)
                run.publish("delta", {"text": text}, text_payload(text))
            await asyncio.sleep(MIRROR_INTERVAL * 1.5)
        for run in runs:
            run.publish("end", {"stop_reason": "end_turn"})
        released.set()
        await asyncio.sleep(MIRROR_INTERVAL * 3)
    # One command per time slice for every run with news: never one per event, nor one per run.
    assert len(mirror.calls) <= deltas + 3, mirror.calls
    assert sum(carried == len(runs) for carried, _ in mirror.calls) >= deltas
    # Its arguments: 2, then 1 per run with news and 2 per event (ids follow from each run's first):
    # a registered run costs nothing more after its first slice.
    events = sum(len(run.events) for run in runs)
    assert sum(args for _, args in mirror.calls) == sum(2 + carried for carried, _ in mirror.calls) + 2 * events
    for run in runs:
        for after in range(len(run.events) + 1):  # another replica's Last-Event-ID: any of them
            again = await store.read(run.id, after, 0)
            assert [e.seq for e in again] == list(range(after + 1, deltas + 3))
            assert [e.frame for e in again] == [e.frame for e in run.events[after:]]
            assert [e.data for e in again] == [e.data for e in run.events[after:]]
        assert await store.owner(run.id) == (run.owner_id, "finished")  # and no longer listed as running
        assert await redis_client.hget(store.running_key, str(run.id)) is None
    await redis_client.delete(*[key for run in runs for key in store.mirror_keys(run.id)[:2]])


def test_a_delta_payload_from_its_template_is_what_json_dumps_writes() -> None:
    for text in [
        "",
        "plain",
        'q"uote',
        "back\\slash",
        "new\nline\ttab\r",
        "\x00\x01\x1f\x7f",
        "é ü 中文 🙂",
        "\u2028\u2029",
    ]:
        expected = json.dumps({"text": text}, separators=(",", ":"), ensure_ascii=False)
        assert text_payload(text) == expected
        event = RunEvent(7, "delta", {"text": text}, text_payload(text))
        assert event.frame == RunEvent(7, "delta", {"text": text}).frame
        assert json.loads(event.payload) == {"text": text}
