"""A run is registered in Redis by the mirror's slice that first carries it (issue #28): starting a
streamed turn sends no Redis command of its own, the runs started in one slice are registered by
that slice's one EVALSHA, a run that ended within its first slice is never listed as running, and
another replica asked for a run in the moment before its slice still finds it.

Commands are counted by the connection class redis-py sends them through (against real Redis)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT

from app.core.ids import uuid7
from app.core.lifecycle import Lifecycle
from app.core.locks import Lock
from app.core.metrics import Metrics
from app.core.telemetry import Telemetry, activate
from app.openai.runs import run_of
from app.runs.errors import RunNotFound
from app.runs.leases import Leases
from app.runs.manager import MIRROR_INTERVAL, Run, RunManager
from app.runs.router import _locate
from app.runs.store import APPEND, RunStore
from tests.fixtures.services import redis_url
from tests.helpers import eventually

LEASE = 600.0  # the lease's own loops (renew, sweep) stay asleep for the whole test


def counting_redis() -> tuple[Redis, list[tuple[str, int]]]:
    """A client whose every command is recorded as it is packed: (name, number of arguments)."""
    sent: list[tuple[str, int]] = []

    class Counting(Connection):
        def pack_command(self, *args: EncodableT) -> list[bytes]:
            name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            sent.append((name.upper(), len(args) - 1))
            return super().pack_command(*args)

    pool = ConnectionPool.from_url(redis_url(), connection_class=Counting)
    return Redis.from_pool(pool), sent


async def held(run: Run) -> None:
    """A turn still running when the test looks (its events, if any, published by the test)."""
    with run.scope:
        await asyncio.Event().wait()


@asynccontextmanager
async def replica(
    prefix: str, name: str, redis: Redis, mirror_interval: float = MIRROR_INTERVAL
) -> AsyncIterator[RunManager]:
    """A replica's RunManager with leases (registrations list runs among the running), on `redis`."""
    store = RunStore(redis, prefix, retention_seconds=60, max_events=1000)
    leases = Leases(redis, prefix, name, LEASE, 60)
    manager = RunManager(store, Lifecycle(0.1), Metrics(), leases=leases, mirror_interval=mirror_interval)
    async with manager:
        try:
            yield manager
        finally:
            for run in manager.runs.values():
                run.cancel("cancelled")


@pytest.fixture
async def prefix(redis_client: Redis) -> AsyncIterator[str]:
    prefix = f"test-register-{uuid.uuid4().hex[:8]}:"
    yield prefix
    keys = [key async for key in redis_client.scan_iter(f"{prefix}*")]
    if keys:
        await redis_client.delete(*keys)


async def quiet(manager: RunManager, redis_client: Redis, redis: Redis) -> None:
    """Until the replica's start-up commands are done: cancel listener subscribed, lease taken, the
    script known to Redis, a connection idle in the pool (so no hand-shake is counted below)."""
    assert manager.store is not None
    assert manager.leases is not None
    channel = manager.store.cancel_channel

    async def subscribed() -> bool:
        return bool((await redis_client.pubsub_numsub(channel))[0][1])

    await eventually(subscribed)
    await eventually(lambda: redis_client.exists(f"{manager.leases.prefix}replica:{manager.leases.replica_id}"))
    await redis_client.script_load(APPEND)
    await redis.ping()


@asynccontextmanager
async def counted(
    prefix: str, redis_client: Redis, name: str = "replica-a"
) -> AsyncIterator[tuple[RunManager, RunStore, list[tuple[str, int]]]]:
    """A replica on a counting client, its start-up commands done and forgotten: (it, its store, what it sends)."""
    redis, sent = counting_redis()
    async with replica(prefix, name, redis) as manager:
        await quiet(manager, redis_client, redis)
        assert manager.store is not None
        sent.clear()
        yield manager, manager.store, sent


async def test_starting_runs_sends_nothing_and_one_slice_registers_them_all(redis_client: Redis, prefix: str) -> None:
    async with counted(prefix, redis_client) as (manager, store, sent):
        owner, conversations = uuid.uuid4(), [uuid.uuid4() for _ in range(3)]
        locks = [Lock(f"conversation:{c}", uuid.uuid4().hex) for c in conversations]
        runs = [
            await manager.start(uuid.uuid4(), owner, held, conversation_id=c, lock=lock)
            for c, lock in zip(conversations, locks, strict=True)
        ]
        assert sent == []  # the streams may begin: no round trip to Redis was waited for
        running = f"{prefix}runs:running"
        await eventually(lambda: redis_client.hlen(running), timeout=2)
        await asyncio.sleep(0.1)  # nothing else follows
        # One EVALSHA (script, key count, the running hash and two keys per run, arguments) for the three.
        assert [name for name, _ in sent] == ["EVALSHA"]
        assert sent[0][1] == 2 + 1 + 2 * len(runs) + 2 + len(runs) * (1 + 12 + 1)
        for run, conversation, lock in zip(runs, conversations, locks, strict=True):
            meta = await redis_client.hgetall(f"{prefix}run:{run.id}:meta")
            assert meta == {  # the meta as before, in one slice (no traceparent: tracing is off)
                b"owner": str(owner).encode(),
                b"state": b"running",
                b"replica": b"replica-a",
                b"conversation": str(conversation).encode(),
                b"lock": f"{prefix}lock:conversation:{conversation}".encode(),
                b"lock_token": lock.token.encode(),
            }
            assert 0 < await redis_client.ttl(f"{prefix}run:{run.id}:meta") <= 60
            assert await redis_client.hget(running, str(run.id)) == b"replica-a"
            assert run.registration is None
            assert run.store is not None

        # Later slices carry the runs' events only: no registration again.
        sent.clear()
        runs[0].publish("start", {"run_id": str(runs[0].id)})
        runs[0].publish("end", {})
        await eventually(lambda: sent, timeout=2)
        assert sent == [("EVALSHA", 2 + 3 + 2 + 1 + 2 * 2)]
        assert await redis_client.hget(running, str(runs[0].id)) is None
        assert await store.owner(runs[0].id) == (owner, "finished")


async def test_a_run_that_ends_within_its_first_slice_is_finished_and_never_listed(
    redis_client: Redis, prefix: str
) -> None:
    async with counted(prefix, redis_client) as (manager, store, sent):
        owner, conversation = uuid.uuid4(), uuid.uuid4()
        fast = await manager.start(uuid.uuid4(), owner, held, conversation_id=conversation)
        fast.publish("start", {"run_id": str(fast.id)})  # a fast turn: all of it before the slice
        fast.publish("delta", {"text": "hi"})
        fast.publish("end", {"stop_reason": "end_turn"})
        slow = await manager.start(uuid.uuid4(), owner, held)  # and another, still running, in the same slice
        await eventually(lambda: redis_client.exists(f"{prefix}run:{slow.id}:meta"), timeout=2)
        assert [name for name, _ in sent] == ["EVALSHA"]
        meta = await redis_client.hgetall(f"{prefix}run:{fast.id}:meta")
        assert meta == {
            b"owner": str(owner).encode(),
            b"state": b"finished",
            b"replica": b"replica-a",
            b"conversation": str(conversation).encode(),
        }
        assert await redis_client.hgetall(f"{prefix}runs:running") == {str(slow.id).encode(): b"replica-a"}
        assert [e.seq for e in await store.read(fast.id, 0, 0)] == [1, 2, 3]
        assert await redis_client.hget(f"{prefix}run:{slow.id}:meta", "state") == b"running"


async def test_a_traced_start_registers_the_trace_that_started_it(redis_client: Redis, prefix: str) -> None:
    telemetry = Telemetry({"OTEL_TRACES_EXPORTER": "console"})  # spans printed, never sent anywhere
    try:
        async with replica(prefix, "replica-a", redis_client) as manager:
            assert manager.store is not None
            with activate(telemetry), telemetry.tracer.start_as_current_span("POST /chat") as span:
                run = await manager.start(uuid.uuid4(), uuid.uuid4(), held)
            context = span.get_span_context()
            expected = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
            assert run.traceparent == expected  # a follower here links to it without asking Redis
            await eventually(lambda: redis_client.exists(f"{prefix}run:{run.id}:meta"), timeout=2)
            assert await manager.store.traceparent(run.id) == expected  # one on another replica, from Redis
    finally:
        telemetry.shutdown()


async def test_another_replica_finds_a_run_started_a_moment_ago(redis_client: Redis, prefix: str) -> None:
    async with replica(prefix, "replica-a", redis_client) as a, replica(prefix, "replica-b", redis_client) as b:
        assert b.store is not None
        owner = uuid.uuid4()
        run = await a.start(uuid.uuid4(), owner, held)
        assert await b.store.owner(run.id) is None  # its client may have `start`: Redis does not know it yet
        assert await _locate(b, run.id, owner) == (False, "running")  # GET /runs/{id}/events, its cancel

        other = await a.start(uuid.uuid4(), owner, held)
        assert await b.store.owner(other.id) is None
        assert await run_of(b, other.id, owner) is b.store  # GET /v1/responses/{id}?stream=true, its cancel

        # What Redis does not know after a slice is not found; nor is another owner's run.
        with pytest.raises(RunNotFound):
            await _locate(b, uuid.uuid4(), owner)
        with pytest.raises(RunNotFound):
            await _locate(b, run.id, uuid.uuid4())
        assert await run_of(b, uuid.uuid4(), owner) is None


async def test_a_run_whose_first_slice_is_late_is_still_found(redis_client: Redis, prefix: str) -> None:
    # Replica A's slices go out half a second apart (its loop or Redis slow): B is asked at once.
    async with (
        replica(prefix, "replica-a", redis_client, mirror_interval=0.5) as a,
        replica(prefix, "replica-b", redis_client) as b,
    ):
        owner = uuid.uuid4()
        run = await a.start(uuid7(), owner, held)  # run ids are answers' ids: UUIDv7, they tell their age
        assert await _locate(b, run.id, owner) == (False, "running")
        assert await run_of(b, (await a.start(uuid7(), owner, held)).id, owner) is b.store


async def test_a_miss_for_a_run_long_gone_is_answered_at_once(redis_client: Redis, prefix: str) -> None:
    async with counted(prefix, redis_client, "replica-b") as (b, _, sent):
        ten_minutes_ago = int((time.time() - 600) * 1000)
        old = uuid.UUID(int=(uuid7().int & ((1 << 80) - 1)) | (ten_minutes_ago << 80))
        assert await b.find(old) is None
        assert [c for c in sent if c[0] == "HGETALL"] == [("HGETALL", 1)]  # asked once: no wait for a slice


async def test_a_registration_redis_refused_leaves_the_run_streaming_here(prefix: str) -> None:
    unreachable = Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0), socket_connect_timeout=1)
    streamed: list[str] = []

    async def turn(run: Run) -> None:
        await asyncio.sleep(0.1)  # past the first slice, which fails
        for event in ("start", "delta", "end"):
            run.publish(event, {})
        streamed.extend(e.event for e in run.events)

    store = RunStore(unreachable, prefix, retention_seconds=60, max_events=1000)
    async with RunManager(store, Lifecycle(0.1), Metrics()) as manager:
        run = await manager.start(uuid.uuid4(), uuid.uuid4(), turn)
        await eventually(lambda: run.store is None, timeout=2)  # as a failed slice does for events
        await eventually(lambda: run.finished, timeout=2)
    assert streamed == ["start", "delta", "end"]
    await unreachable.aclose()
