"""Shared set-up for the benchmarks: a throw-away Postgres database, the fake LLM and one uvicorn worker.

Everything is started as a subprocess in its own session (so a terminal Ctrl-C reaches only the
benchmark, which then stops them in order) and torn down in `finally`: servers, then the database.
Only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import httpx

from testkit.net import free_port

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_BASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/0"
# One key drives hundreds of turns a second here: the per-key limits (on by default) would refuse
# most of them, and they are not what these benchmarks measure. A --env override turns one back on.
UNLIMITED = {"RATE_LIMIT_PER_MINUTE": "0", "MAX_TURNS_IN_FLIGHT_PER_KEY": "0", "TOKENS_PER_DAY": "0"}

T = TypeVar("T")


def log(message: str) -> None:
    """Progress goes to stderr, so stdout holds only the results (table or JSON)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- small helpers


def raise_nofile() -> int:
    """soft = hard for open files; call before spawning, children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def fmt_ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def print_table(title: str, rows: Sequence[tuple[str, str]]) -> None:
    width = max((len(label) for label, _ in rows), default=0)
    print(f"\n{title}")
    print("-" * max(len(title), width + 20))
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


@dataclass(frozen=True)
class Check:
    """One measured figure against its target; ok is None when it could not be measured."""

    metric: str
    value: str
    target: str
    ok: bool | None

    @property
    def verdict(self) -> str:
        return "n/a" if self.ok is None else "PASS" if self.ok else "MISS"


def check(metric: str, value: float, target: float, *, at_most: bool, unit: str = "", digits: int = 1) -> Check:
    """A numeric Check: `value` within `target` (≤ when at_most, else ≥); NaN is n/a."""
    sign = "≤" if at_most else "≥"
    if math.isnan(value):
        return Check(metric, "n/a", f"{sign} {target:g}{unit}", None)
    ok = value <= target if at_most else value >= target
    return Check(metric, f"{value:.{digits}f}{unit}", f"{sign} {target:g}{unit}", ok)


def print_checks(title: str, checks: Sequence[Check]) -> None:
    """metric / value / target / PASS|MISS, aligned."""
    head = ("metric", "value", "target", "result")
    rows = [head, *((c.metric, c.value, c.target, c.verdict) for c in checks)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"\n{title}")
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        if n == 0:
            print("  ".join("-" * width for width in widths))


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from /proc; (0, 0) once the process is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process from /proc/<pid>/stat; NaN once it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # Fields after the ")" that closes the command name; utime and stime are 14 and 15.
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return math.nan


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies over all cores, from the first line of /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


async def background_load(seconds: float = 1.0) -> float:
    """Cores busy while our servers idle: other work on the box (a test run...) skews every number."""
    busy0, total0 = machine_cpu()
    await asyncio.sleep(seconds)
    busy1, total1 = machine_cpu()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


BUSY_WARNING = 0.25  # cores; above this the box is not quiet


async def wait_for_quiet(max_wait: float) -> float:
    """Measure background load in 1 s windows until it is below BUSY_WARNING or `max_wait` passes."""
    load = await background_load()
    for _ in range(int(max_wait)):
        if load <= BUSY_WARNING:
            break
        log(f"{load:.2f} cores busy with other work; waiting for a quieter moment")
        load = await background_load()
    if load > BUSY_WARNING:
        log(f"warning: {load:.2f} cores busy with other processes; numbers will be noisy")
    return load


def child_pid(pid: int) -> int | None:
    """The first child of `pid` (the uvicorn under py-spy), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
            found = children.read().split()
    except OSError:
        return None
    return int(found[0]) if found else None


def add_common_options(parser: argparse.ArgumentParser, profile_help: str) -> None:
    """--wait-quiet, --env, --server-log, --json and --profile, as every single-server benchmark takes them."""
    parser.add_argument(
        "--wait-quiet", type=float, default=60.0, help="wait up to this many seconds for other CPU load to stop"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server setting, repeatable (e.g. --env DB_POOL_TIMEOUT=30); shown in the report",
    )
    parser.add_argument("--server-log", metavar="PATH", help="keep a copy of the server's log (stdout+stderr) here")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--profile", nargs="?", const=str(DEFAULT_PROFILE), default=None, metavar="PATH", help=profile_help
    )


def settings_env_names() -> set[str]:
    """Every variable the service reads, so a developer's shell cannot leak into the bench."""
    from app.core.config import Settings

    return {name.upper() for name in Settings.model_fields}


def parse_env_overrides(pairs: Sequence[str]) -> dict[str, str]:
    """`--env KEY=VALUE` options: experiment with a setting (DB_POOL_TIMEOUT=30...) without editing code."""
    overrides: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--env wants KEY=VALUE, got {pair!r}")
        overrides[key.strip().upper()] = value
    return overrides


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in settings_env_names()}
    env.update(extra)
    return env


# --------------------------------------------------------------------------- database


@contextlib.asynccontextmanager
async def pg_admin() -> AsyncIterator[Any]:
    """A short-lived connection to the `postgres` database, for CREATE/DROP DATABASE and statistics."""
    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        yield conn
    finally:
        await conn.close()


async def create_database(name: str) -> str:
    """CREATE DATABASE `name`; returns its SQLAlchemy asyncpg URL."""
    async with pg_admin() as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_BASE_URL}/{name}"


async def drop_database(name: str) -> None:
    async with pg_admin() as conn:
        # FORCE: a server we had to SIGKILL may have left sessions behind.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def db_xacts(name: str) -> dict[str, int]:
    """Committed and rolled-back transactions of one database (pg_stat_database)."""
    async with pg_admin() as conn:
        row = await conn.fetchrow("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1", name)
    return {"commit": int(row["xact_commit"]), "rollback": int(row["xact_rollback"])} if row else {}


async def delete_redis_keys(url: str, prefix: str, limit: int = 200_000) -> int:
    """Remove what the service stored under this run's key prefix (bounded SCAN)."""
    from redis.asyncio import Redis

    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch.clear()
            if deleted + len(batch) >= limit:
                break
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted


def run_checked(cmd: Sequence[str], env: Mapping[str, str], what: str, timeout: float) -> str:
    """Run a short helper command; on failure raise with its output, which says why."""
    done = subprocess.run(
        list(cmd), cwd=REPO, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def migrate(database_url: str) -> None:
    env = clean_env({"DATABASE_URL": database_url, "APP_NAME": "agentchat-bench-migrate"})
    run_checked([sys.executable, "-m", "alembic", "upgrade", "head"], env, "alembic upgrade head", timeout=120)


def create_key(database_url: str, name: str = "bench") -> str:
    env = clean_env({"DATABASE_URL": database_url, "APP_NAME": "agentchat-bench-cli", "LOG_LEVEL": "WARNING"})
    out = run_checked([sys.executable, "-m", "app.cli", "create-key", "--name", name], env, "create-key", timeout=60)
    lines = [line.strip() for line in out.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError("create-key printed nothing")
    return lines[-1]


async def prepare_database(db_name: str) -> tuple[str, str]:
    """Create, migrate and give one API key to a fresh database: (its URL, the key)."""
    db_url = await create_database(db_name)
    log(f"database {db_name} created; migrating")
    await asyncio.to_thread(migrate, db_url)
    return db_url, await asyncio.to_thread(create_key, db_url)


# --------------------------------------------------------------------------- subprocesses


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, first: signal.Signals = signal.SIGTERM, grace: float = 10.0) -> None:
        """Signal the child's own process group (it leads it), then SIGKILL after `grace` seconds."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, first)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop within {grace:.0f}s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=5)


def spawn(name: str, cmd: Sequence[str], env: Mapping[str, str], log_path: Path) -> Proc:
    # stdout and stderr go to a file, never a pipe nobody reads (a full pipe would stall the server).
    with open(log_path, "wb") as sink:
        popen = subprocess.Popen(
            list(cmd),
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Proc(name, popen, log_path)


async def wait_http_ok(url: str, proc: Proc, within: float = 30.0) -> None:
    """Poll `url` until it answers 200, failing early (with the log) if the process dies."""
    deadline = time.monotonic() + within
    last = "no answer"
    async with httpx.AsyncClient(timeout=2.0) as client:
        for _ in range(int(within / 0.1) + 1):
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.log_tail()}")
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return
                last = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} not ready at {url} after {within:.0f}s ({last}):\n{proc.log_tail()}")


def spawn_fake(workdir: Path) -> tuple[Proc, str]:
    """The fake LLM (testkit/fake_llm) on a free loopback port: (its process, its URL); not yet ready."""
    port = free_port()
    cmd = [sys.executable, "-m", "testkit.fake_llm", "--host", HOST, "--port", str(port)]
    return spawn("fake LLM", cmd, clean_env({}), workdir / "fake.log"), f"http://{HOST}:{port}"


def uvicorn_cmd(target: str, port: int, *, dev: bool = False) -> list[str]:
    """One uvicorn worker on loopback; the same flags (default loop and HTTP: uvloop, httptools) for every server."""
    return [
        sys.executable, *(["-X", "dev"] if dev else []), "-m", "uvicorn", target,
        "--host", HOST, "--port", str(port), "--no-access-log", "--backlog", "4096",
    ]  # fmt: skip


def py_spy_path() -> str | None:
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


DEFAULT_PROFILE = REPO / "bench" / "profile.svg"


def resolve_profile(wanted: str | None) -> Path | None:
    """The --profile output path, or None (with a message) when py-spy is not installed."""
    if wanted is None:
        return None
    if py_spy_path() is None:
        log("--profile: py-spy is not installed (pip install py-spy); running without a profile")
        return None
    return Path(wanted).resolve()


# --------------------------------------------------------------------------- server log


@dataclass
class LogReport:
    lines: int = 0
    errors: int = 0  # JSON records at level error/critical
    warnings: int = 0
    tracebacks: int = 0  # "Traceback" lines or records carrying an exception
    by_event: dict[str, int] = field(default_factory=dict)  # error/warning events, counted
    samples: list[str] = field(default_factory=list)  # the first few, shortened

    def summary(self, turns: int) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "errors": self.errors,
            "warnings": self.warnings,
            "tracebacks": self.tracebacks,
            "events": self.by_event,
            "samples": self.samples,
            "lines_per_turn": self.lines / turns if turns else None,
        }


def stop_and_scan(procs: Sequence[Proc]) -> dict[str, dict[str, int]]:
    """Stop each server, then count the errors and tracebacks its log holds, by server name."""
    logs: dict[str, dict[str, int]] = {}
    for proc in procs:
        proc.stop()
        report = scan_log(proc.log_path)
        logs[proc.name] = {"errors": report.errors, "tracebacks": report.tracebacks}
    return logs


def scan_log(path: Path, max_samples: int = 5) -> LogReport:
    report = LogReport()
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return report
    for line in text.splitlines():
        report.lines += 1
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            # A plain-text traceback (printed before logging was set up, or by uvicorn itself).
            if "Traceback (most recent call last)" in line:
                report.tracebacks += 1
            continue
        level = str(record.get("level", "")).lower()
        exception = str(record.get("exception", ""))
        if exception:
            report.tracebacks += 1
        if level in ("error", "critical", "warning"):
            if level == "warning":
                report.warnings += 1
            else:
                report.errors += 1
            # The last line of a traceback names the exception: the part worth reading.
            cause = exception.strip().splitlines()[-1] if exception.strip() else ""
            for detail in ("error_type", "cause", "error"):
                if record.get(detail) and not cause:
                    cause = f"{detail}={record[detail]}"
            key = f"{level}:{record.get('event', '?')}" + (f" [{cause[:160]}]" if cause else "")
            report.by_event[key] = report.by_event.get(key, 0) + 1
            if level != "warning" and len(report.samples) < max_samples:
                report.samples.append(line[:300])
    return report


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    tag: str  # the <hex> shared by the database name and APP_NAME
    db_name: str
    db_url: str
    app_name: str
    api_key: str
    fake_url: str
    server_url: str
    fake: Proc
    server: Proc
    profile: Path | None
    naive: Proc | None = None  # bench/naive_app.py, with naive=True
    naive_url: str = ""
    log_report: LogReport | None = None  # filled in after the server has stopped
    naive_log_report: LogReport | None = None
    naive_log_tail: str = ""  # kept when its log has tracebacks (the file goes with the work dir)
    # pg_stat_database counts when the server became ready and after it exited (exit flushes them).
    xacts_start: dict[str, int] = field(default_factory=dict)
    xacts_end: dict[str, int] = field(default_factory=dict)

    def xacts_used(self) -> dict[str, int]:
        return {k: self.xacts_end.get(k, 0) - v for k, v in self.xacts_start.items()} if self.xacts_end else {}

    def server_pid(self) -> int | None:
        """The uvicorn process itself (under py-spy it is py-spy's child)."""
        if self.profile is None:
            return self.server.pid
        return child_pid(self.server.pid)


@contextlib.asynccontextmanager
async def bench_stack(
    server_env: Mapping[str, str],
    *,
    profile: Path | None = None,
    keep_log: Path | None = None,
    ready_timeout: float = 60.0,
    naive: bool = False,
    baseline_dir: Path | None = None,
    baseline_app: str = "bench.naive_app:app",
    server_app: str = "app.main:app",
) -> AsyncIterator[Stack]:
    """Database + migrations + key + fake LLM + one uvicorn worker; all undone on exit, however it comes.

    naive=True also starts bench/naive_app.py (the tutorial baseline; or `baseline_app`, such as
    bench/floor_app.py) on the same database, fake and key, as `<APP_NAME>-naive` in pg_stat_activity,
    so the service's own connection counts leave it out.
    With `baseline_dir`, that baseline is instead the service as checked out there (another commit,
    for an A/B run), with the service's own settings."""
    tag = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"agentchat-bench-{tag}-"))
    db_name: str | None = None
    procs: list[Proc] = []
    stack: Stack | None = None
    server_proc: Proc | None = None
    try:
        db_name = f"agentchat_bench_{tag}"  # set first: the cleanup's DROP IF EXISTS covers a half-done create
        db_url, api_key = await prepare_database(db_name)
        fake, fake_url = spawn_fake(workdir)
        procs.append(fake)
        await wait_http_ok(f"{fake_url}/_stats", fake)

        app_name = f"agentchat-bench-{tag}"
        env = clean_env(
            {
                "DATABASE_URL": db_url,
                # Our own Redis namespace: no collision with a dev instance's keys, and easy to remove.
                "REDIS_KEY_PREFIX": f"{app_name}:",
                "ANTHROPIC_API_KEY": "bench",
                "ANTHROPIC_BASE_URL": fake_url,
                "LLM_PROVIDER": "anthropic",
                "APP_NAME": app_name,
                "LOG_FORMAT": "json",
                "LLM_MAX_RETRIES": "0",
                **UNLIMITED,
                **server_env,
            }
        )
        port = free_port()
        cmd = uvicorn_cmd(server_app, port)
        if profile is not None:
            spy = py_spy_path()
            assert spy is not None, "checked by the caller"
            # --nonblocking: sample without pausing the server, so the numbers move less.
            # A .txt path gets collapsed stacks (greppable); anything else a flame graph.
            fmt = "raw" if profile.suffix == ".txt" else "flamegraph"
            cmd = [spy, "record", "--nonblocking", "--rate", "200", "--format", fmt, "-o", str(profile), "--", *cmd]
        server = server_proc = spawn("uvicorn", cmd, env, workdir / "server.log")
        procs.append(server)
        server_url = f"http://{HOST}:{port}"
        await wait_http_ok(f"{server_url}/readyz", server, within=ready_timeout)
        log(f"fake LLM at {fake_url}, service at {server_url} (pid {server.pid}), APP_NAME={app_name}")

        stack = Stack(tag, db_name, db_url, app_name, api_key, fake_url, server_url, fake, server, profile)
        if naive:
            naive_env = {"DATABASE_URL": db_url, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": fake_url}
            naive_env["APP_NAME"] = f"{app_name}-naive"
            naive_port = free_port()
            naive_cmd = uvicorn_cmd(baseline_app, naive_port)
            if baseline_dir is not None:
                naive_cmd = [*uvicorn_cmd("app.main:app", naive_port), "--app-dir", str(baseline_dir)]
                naive_env = {**env, "APP_NAME": naive_env["APP_NAME"]}
            stack.naive = spawn("naive app", naive_cmd, clean_env(naive_env), workdir / "naive.log")
            procs.append(stack.naive)
            stack.naive_url = f"http://{HOST}:{naive_port}"
            await wait_http_ok(f"{stack.naive_url}/healthz", stack.naive, within=ready_timeout)
            log(f"baseline ({baseline_dir or baseline_app}) at {stack.naive_url} (pid {stack.naive.pid})")
        stack.xacts_start = await db_xacts(db_name)
        yield stack
    finally:
        # Server first (its pool closes cleanly), then the fake, then the database.
        for proc in reversed(procs):
            try:
                if proc is server_proc and profile is not None:
                    # SIGINT to py-spy's group: uvicorn shuts down and py-spy writes the flame graph.
                    proc.stop(signal.SIGINT, grace=60.0)
                else:
                    proc.stop()
            except Exception as exc:  # keep cleaning up whatever happens
                log(f"stopping {proc.name} failed: {exc!r}")
        if stack is not None:
            stack.log_report = scan_log(stack.server.log_path)
            if stack.naive is not None:
                stack.naive_log_report = scan_log(stack.naive.log_path)
                if stack.naive_log_report.tracebacks:
                    stack.naive_log_tail = stack.naive.log_tail(2000)
            if keep_log is not None:
                with contextlib.suppress(OSError):
                    shutil.copyfile(stack.server.log_path, keep_log)
                    log(f"server log copied to {keep_log}")
            try:
                stack.xacts_end = await asyncio.wait_for(db_xacts(stack.db_name), timeout=10)
            except Exception as exc:
                log(f"could not read pg_stat_database: {exc!r}")
        await remove_leftovers(tag, server_env.get("REDIS_URL"), db_name, workdir)


async def remove_leftovers(tag: str, redis_url: str | None, db_name: str | None, workdir: Path) -> None:
    """After the servers stopped: delete the run's Redis keys, drop its database, remove its work dir."""
    if redis_url:
        try:
            removed = await asyncio.wait_for(delete_redis_keys(redis_url, f"agentchat-bench-{tag}"), timeout=30)
            log(f"removed {removed} Redis keys under agentchat-bench-{tag}")
        except Exception as exc:
            log(f"could not clean Redis keys: {exc!r}")
    if db_name is not None:
        try:
            await asyncio.wait_for(drop_database(db_name), timeout=30)
            log(f"database {db_name} dropped")
        except BaseException as exc:
            log(f"could not drop database {db_name}: {exc!r}")
    shutil.rmtree(workdir, ignore_errors=True)


def run_main(main: Callable[[], Awaitable[T]]) -> T:
    """asyncio.run, with SIGTERM treated like Ctrl-C: cancel the main task so every `finally` runs."""

    async def wrapper() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await main()
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(wrapper())


def script_main(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], Awaitable[dict[str, Any]]],
    print_report: Callable[[dict[str, Any], argparse.Namespace], None],
) -> int:
    """A bench script's whole run: measure, then print the report (or the figures as JSON with --json)."""
    raise_nofile()
    result = run_or_exit(lambda: run(args))
    if args.json:
        print(json.dumps(jsonable(result), indent=2))
    else:
        print_report(result, args)
    return 0


def run_or_exit(main: Callable[[], Awaitable[T]]) -> T:
    """run_main for a script: Ctrl-C/SIGTERM exits 130, a set-up failure exits 2 with one line."""
    try:
        return run_main(main)
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted; cleaned up")
        raise SystemExit(130) from None
    except (RuntimeError, OSError, subprocess.SubprocessError, asyncpg.PostgresError) as exc:
        # Set-up failures (service does not start, Postgres unreachable...) are one message, not a trace.
        log(f"set-up failed: {exc}")
        raise SystemExit(2) from None


def jsonable(value: Any) -> Any:
    """NaN (an empty percentile) becomes null, so the output is strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


# --------------------------------------------------------------------------- building blocks for
# benchmarks that start their own servers (bench.soak: one `-X dev` server; bench.replicas: two
# replicas behind nginx). bench_stack above stays as it is for streams/overhead.

# Lines in a server log that mean a leaked connection, task, socket or file.
LEAK_MARKERS = re.compile(r"non-checked-in|Task was destroyed|Unclosed|ResourceWarning")


def leak_lines(path: Path, limit: int = 10) -> tuple[int, list[str]]:
    """(how many lines of the log carry a leak marker, the first `limit` of them, shortened)."""
    count = 0
    found: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as text:
            for line in text:
                if LEAK_MARKERS.search(line):
                    count += 1
                    if len(found) < limit:
                        found.append(line.rstrip()[:300])
    except OSError:
        pass
    return count, found


def fd_count(pid: int) -> int:
    """Open file descriptors of a process (entries of /proc/<pid>/fd); -1 once it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def children_pids(pid: int) -> list[int]:
    """Direct children of `pid` (nginx's workers under its master), from /proc."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
            return [int(p) for p in children.read().split()]
    except (OSError, ValueError):
        return []


async def redis_clients_named(client: Any, name: str) -> list[dict[str, Any]]:
    """CLIENT LIST entries whose name is `name` (the service sets APP_NAME as its client name)."""
    return [c for c in await client.client_list() if c.get("name") == name]


@dataclass
class Base:
    """What every server of one benchmark run shares: database, API key, fake LLM, work dir."""

    tag: str
    workdir: Path
    db_name: str
    db_url: str
    api_key: str
    fake: Proc
    fake_url: str
    procs: list[Proc] = field(default_factory=list)  # stopped newest first on exit, the fake last

    @property
    def name(self) -> str:
        """`agentchat-bench-<tag>`: the stem of every APP_NAME and Redis key prefix of the run."""
        return f"agentchat-bench-{self.tag}"

    def server_env(self, app_name: str, redis_prefix: str, extra: Mapping[str, str]) -> dict[str, str]:
        """The service's environment: our database, the fake as Anthropic, our names; then `extra`."""
        return clean_env(
            {
                "DATABASE_URL": self.db_url,
                "REDIS_KEY_PREFIX": redis_prefix,
                "ANTHROPIC_API_KEY": "bench",
                "ANTHROPIC_BASE_URL": self.fake_url,
                "LLM_PROVIDER": "anthropic",
                "APP_NAME": app_name,
                "LOG_FORMAT": "json",
                **UNLIMITED,
                **extra,
            }
        )

    async def start_server(
        self, name: str, env: Mapping[str, str], *, dev: bool = False, ready_timeout: float = 60.0
    ) -> tuple[Proc, str]:
        """One uvicorn worker on a free loopback port (`python -X dev` with dev=True); waits for /readyz."""
        port = free_port()
        proc = spawn(name, uvicorn_cmd("app.main:app", port, dev=dev), env, self.workdir / f"{name}.log")
        self.procs.append(proc)
        url = f"http://{HOST}:{port}"
        await wait_http_ok(f"{url}/readyz", proc, within=ready_timeout)
        return proc, url


@contextlib.asynccontextmanager
async def bench_base(*, redis_url: str | None = REDIS_URL) -> AsyncIterator[Base]:
    """A fresh database (migrated, one API key) and the fake LLM. On exit, however it comes: every
    process started through Base.start_server is stopped, then the fake; the Redis keys under
    `agentchat-bench-<tag>` are deleted, the database is dropped and the work dir removed."""
    tag = secrets.token_hex(4)
    workdir = Path(tempfile.mkdtemp(prefix=f"agentchat-bench-{tag}-"))
    db_name = f"agentchat_bench_{tag}"  # set first: the cleanup's DROP IF EXISTS covers a half-done create
    base: Base | None = None
    fake: Proc | None = None
    try:
        db_url, api_key = await prepare_database(db_name)
        fake, fake_url = spawn_fake(workdir)
        await wait_http_ok(f"{fake_url}/_stats", fake)
        base = Base(tag, workdir, db_name, db_url, api_key, fake, fake_url)
        yield base
    finally:
        for proc in [*reversed(base.procs if base else []), *([fake] if fake else [])]:
            try:
                proc.stop()
            except Exception as exc:  # keep cleaning up whatever happens
                log(f"stopping {proc.name} failed: {exc!r}")
        await remove_leftovers(tag, redis_url, db_name, workdir)
