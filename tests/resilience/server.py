"""The real service in a subprocess (`python -X dev -m uvicorn`), and the invariants checked after faults."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no stubs or py.typed
import httpx
from redis.asyncio import Redis

from app.core.config import Settings
from testkit.net import free_port
from tests.fixtures.services import asyncpg_dsn

ROOT = Path(__file__).resolve().parents[2]
# Lines that mean a leak or a bug, whatever the scenario.
LEAK_PATTERNS = re.compile(r"non-checked-in|Task was destroyed|Unclosed|ResourceWarning|Task exception was never")

READY_WITHIN = 60.0  # seconds


def server_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "ANTHROPIC_", "LLM_"))}
    env.update(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url or "",
        REDIS_KEY_PREFIX=settings.redis_key_prefix,
        ANTHROPIC_API_KEY="test-anthropic-key",
        ANTHROPIC_BASE_URL=settings.anthropic_base_url or "",
        LLM_PROVIDER="anthropic",
        LLM_MODEL="claude-test",
        APP_NAME=settings.app_name,
        DB_POOL_SIZE=str(settings.db_pool_size),
        DB_MAX_OVERFLOW=str(settings.db_max_overflow),
        DB_POOL_TIMEOUT="3",
        LLM_MAX_RETRIES="1",
        LLM_READ_TIMEOUT="2",
        TURN_TIMEOUT="6",
        SHUTDOWN_GRACE_SECONDS="2",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        PYTHONASYNCIODEBUG="0",
        # The fault suite drives hundreds of turns (40 at once) with one key: per-key limits off.
        RATE_LIMIT_PER_MINUTE="0",
        MAX_TURNS_IN_FLIGHT_PER_KEY="0",
        TOKENS_PER_DAY="0",
    )
    env.update(overrides)
    return env


@dataclass
class ServerProcess:
    settings: Settings
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, **env: str) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - started once, waited on with asyncio below
            [
                sys.executable,
                "-X",
                "dev",
                "-m",
                "uvicorn",
                "app.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--timeout-graceful-shutdown",
                "8",
            ],
            cwd=ROOT,
            env=server_env(self.settings, **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        # A bound for a broken start, not a timing: two servers importing under `-X dev` on a
        # loaded 2-core machine took longer than 15 s once.
        deadline = asyncio.get_running_loop().time() + READY_WITHIN
        async with httpx.AsyncClient() as http:
            while asyncio.get_running_loop().time() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
                try:
                    if (await http.get(f"{self.url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        tail = self.log_path.read_text()[-2000:]
        raise RuntimeError(f"server did not become ready within {READY_WITHIN:g} s: {tail}")

    async def terminate(self, timeout: float = 20) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float) -> int:
        assert self.process is not None
        for _ in range(int(timeout / 0.05)):
            code = self.process.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        self.process.kill()
        raise AssertionError("server did not exit in time")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_problems(self, allowed: tuple[str, ...] = ()) -> list[str]:
        """Leak markers, and tracebacks other than those a scenario expects."""
        problems = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if LEAK_PATTERNS.search(line):
                problems.append(line[:500])
            elif "Traceback" in line and not any(a in line for a in allowed):
                problems.append(line[:500])
        return problems


async def pg_connections(admin_url: str, app_name: str) -> dict[str, int]:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        rows = await conn.fetch(
            "SELECT coalesce(state, 'none') AS state, count(*) AS n FROM pg_stat_activity "
            "WHERE application_name = $1 GROUP BY 1",
            app_name,
        )
    finally:
        await conn.close()
    return {r["state"]: r["n"] for r in rows}


async def kill_pg_connections(admin_url: str, app_name: str) -> int:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", app_name
        )
    finally:
        await conn.close()
    return len(rows)


async def redis_clients(redis: Redis, app_name: str) -> int:
    clients = await redis.client_list()
    return sum(1 for c in clients if c.get("name") == app_name)


async def pool_high_water(url: str) -> int:
    """The most connections the server's pool ever had checked out at once (its own count, taken at
    every checkout: unlike sampling, it cannot miss a peak)."""
    async with httpx.AsyncClient(base_url=url) as http:
        text = (await http.get("/metrics")).text
    line = next(line for line in text.splitlines() if line.startswith("agentchat_db_pool_checked_out_max "))
    return int(float(line.split()[-1]))


class PoolWatch:
    """Samples the app's Postgres connections (pg_stat_activity) while a scenario runs: a check that
    nothing outside the pool connects. Sampling can miss a short peak; `pool_high_water` cannot."""

    def __init__(self, admin_url: str, app_name: str) -> None:
        self.admin_url, self.app_name = admin_url, app_name
        self.peak = 0
        self.idle_in_transaction_seen = 0
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            states = await pg_connections(self.admin_url, self.app_name)
            self.peak = max(self.peak, sum(states.values()))
            await asyncio.sleep(0.1)

    async def __aenter__(self) -> PoolWatch:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
