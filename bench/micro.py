"""The hot path's parts, each measured alone: CPU per operation in this process, before and after.

    python -m bench.micro

Each pair is what the service used to do and what it does now, run in the same process, in
rounds that alternate (this box's speed drifts by seconds): the model call through the SDK
(httpx2's default client vs the service's, the SDK's aiohttp client, against the fake model), a turn's model
call with its tool schemas (`messages.create` vs `post` with the body encoded once), one statement on
Postgres (SQLAlchemy's execution layer vs asyncpg through `Database.tx()`), a phase's connection
(a SQLAlchemy Connection around the pooled one vs the pooled one, as `Database.tx()` checks out),
one INFO log line (through a stdlib LogRecord and formatter vs structlog straight to stderr; the
same processors, redaction included), and the disconnect watch (an anyio task group vs one asyncio
task). Prints the median of five rounds, in µs of this process's CPU per operation.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import anthropic
import anyio
import httpx2
import structlog
import uvloop
from sqlalchemy import text

from app.agent.registry import build_registry
from app.core.config import DEFAULT_MODEL, Settings
from app.core.db import Database, create_engine
from app.core.logging import configure_logging, redact_secrets
from app.core.metrics import Metrics
from app.llm.anthropic import MESSAGES_PATH, _http_client
from bench._harness import create_database, drop_database, log, spawn_fake, wait_http_ok

Op = Callable[[], Awaitable[None]]
ROUNDS, PER_ROUND = 5, 400


async def measure(pairs: dict[str, tuple[Op, Op]]) -> None:
    for name, (before, after) in pairs.items():
        for op in (before, after):  # warm up
            for _ in range(50):
                await op()
        timings: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(ROUNDS):
            for label, op in (("before", before), ("after", after)):
                started = time.process_time()
                for _ in range(PER_ROUND):
                    await op()
                timings[label].append((time.process_time() - started) / PER_ROUND * 1e6)
        b, a = statistics.median(timings["before"]), statistics.median(timings["after"])
        print(f"{name:<44} before {b:8.1f} µs   after {a:8.1f} µs   ({b / a:.1f}×)", flush=True)


def service_client(url: str) -> anthropic.AsyncAnthropic:
    """The SDK as the service configures it: its aiohttp client, no OpenTelemetry spans."""
    return anthropic.AsyncAnthropic(
        api_key="bench",
        base_url=url,
        max_retries=0,
        http_client=_http_client(100),
        open_telemetry={"traces": False, "propagation": False},
    )


def model_call_ops(url: str) -> tuple[Op, Op]:
    question = [{"role": "user", "content": "Say hello"}]
    default = anthropic.AsyncAnthropic(api_key="bench", base_url=url, max_retries=0)
    ours = service_client(url)

    def call(client: anthropic.AsyncAnthropic) -> Op:
        async def op() -> None:
            raw = await client.messages.with_raw_response.create(model=DEFAULT_MODEL, max_tokens=64, messages=question)  # type: ignore[arg-type]
            await raw.read()

        return op

    return call(default), call(ours)


def request_building_ops(url: str) -> tuple[Op, Op]:
    """A turn's model call as the service makes it (history, the built-in tools' schemas) on the
    service's client: `messages.create` vs the SDK's `post` with the body encoded once."""
    client = service_client(url)
    body = {
        "model": DEFAULT_MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Say hello"}]}],
        "tools": build_registry(Settings()).schemas(),
    }

    async def before() -> None:
        raw = await client.messages.with_raw_response.create(**body)  # type: ignore[call-overload]
        json.loads(await raw.read())

    async def after() -> None:
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        json.loads((await client.post(MESSAGES_PATH, content=content, cast_to=httpx2.Response)).content)

    return before, after


def statement_ops(db: Database) -> tuple[Op, Op]:
    engine = db.engine.execution_options(isolation_level="AUTOCOMMIT")
    through_sqlalchemy = text("SELECT CAST(:id AS uuid), CAST(:doc AS jsonb), now()")

    async def before() -> None:
        async with engine.connect() as conn:
            (await conn.execute(through_sqlalchemy, {"id": uuid.uuid4(), "doc": '{"a": 1}'})).all()

    async def after() -> None:
        async with db.tx() as tx:
            assert tx.driver is not None  # Postgres: the phase's statements go through asyncpg
            await tx.driver.fetch("SELECT $1::uuid, $2::jsonb, now()", uuid.uuid4(), '{"a": 1}')

    return before, after


def checkout_ops(db: Database) -> tuple[Op, Op]:
    """A phase's connection: a SQLAlchemy Connection around the pooled one (what `Database.tx` did),
    against the pooled connection itself (what it does)."""
    engine = db.engine.execution_options(isolation_level="AUTOCOMMIT")

    async def before() -> None:
        conn = engine.connect()
        await conn.start()
        assert (await conn.get_raw_connection()).driver_connection is not None
        await conn.close()

    async def after() -> None:
        async with db.tx() as tx:
            assert tx.driver is not None

    return before, after


def log_ops() -> tuple[Op, Op]:
    fields = {"conversation_id": str(uuid.uuid4()), "message_id": str(uuid.uuid4()), "status": "complete"}
    sink = io.StringIO()
    # Before: the stdlib route (a LogRecord and a ProcessorFormatter pass per line), as configured until now.
    stdlib = logging.getLogger("bench.micro.stdlib")
    handler = logging.StreamHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact_secrets,
                structlog.processors.JSONRenderer(),
            ]
        )
    )
    stdlib.handlers, stdlib.propagate, stdlib.level = [handler], False, logging.INFO
    old = structlog.wrap_logger(
        stdlib,
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ExtraAdder(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )
    new = structlog.get_logger("bench.micro")

    async def before() -> None:
        old.info("chat.turn.finished", **fields)

    async def after() -> None:
        new.info("chat.turn.finished", **fields)

    return before, after


def watch_ops() -> tuple[Op, Op]:
    from app.core.asgi import DisconnectWatch

    async def receive() -> dict[str, str]:
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def before() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(receive)
            await asyncio.sleep(0)
            group.cancel_scope.cancel()

    async def after() -> None:
        async with DisconnectWatch(receive):
            await asyncio.sleep(0)

    return before, after


async def main() -> None:
    db_name = f"agentchat_bench_{secrets.token_hex(4)}"
    fake, url = spawn_fake(Path(tempfile.mkdtemp(prefix="agentchat-micro-")))
    db_url = await create_database(db_name)
    engine = create_engine(Settings(database_url=db_url))
    real_stderr = sys.stderr
    try:
        await wait_http_ok(f"{url}/_stats", fake)
        configure_logging("json", "INFO")
        db = Database(engine, Metrics())
        pairs = {
            "model call (SDK, raw response, fake model)": model_call_ops(url),
            "turn's model call: create() → post(bytes)": request_building_ops(url),
            "one statement on Postgres": statement_ops(db),
            "a phase's checkout: Connection → pooled": checkout_ops(db),
            "one INFO log line": log_ops(),
            "disconnect watch around a block": watch_ops(),
        }
        print("operation                                    CPU per operation (median of 5 rounds)")
        sys.stderr = io.StringIO()  # the log lines of the logging pair go nowhere
        await measure(pairs)
    finally:
        sys.stderr = real_stderr
        await engine.dispose()
        fake.stop()
        await drop_database(db_name)
        log("done")


if __name__ == "__main__":
    uvloop.run(main())
