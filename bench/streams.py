"""Many SSE turns in flight at once against one uvicorn worker with a 5-connection database pool.

    python -m bench.streams                      # 500 streams at once
    python -m bench.streams --streams 1000 --json
    python -m bench.streams --scenario ramp600   # 600 streams started over 10 s, 40 deltas 250 ms apart
    python -m bench.streams --scenario burst50   # 50 at once: user messages stored 0.5 s later?
    python -m bench.streams --scenario deltas    # server CPU per streamed turn and per relayed delta
    python -m bench.streams --scenario real400   # 400 streams over 10 s, 40 deltas 50 ms apart (real speed)
    python -m bench.streams --scenario quiet     # 2,000 open streams waiting on a slow tool: RSS, idle CPU

Every stream asks the fake for `[[words:40]] [[slow:0.1]]` (about 4 s of deltas), all are started
together (or evenly over `--ramp` seconds), so they overlap. Proves: no connection is held across
the model call (peak PG connections stay within the pool, nothing sits idle in transaction), the
fake really saw N streams open at once, and how long users wait for the first token. Exit code 0
iff no stream failed (HTTP status, `error` event, exception, no `end`) and every answered turn was
stored `complete` in the database. The scenarios are the issue's presets (pool 5, no overflow,
DB_POOL_TIMEOUT=5, Redis on, LOG_LEVEL=INFO) and also print PASS/MISS against its targets.

`deltas` runs 100 streams of 1 delta, then 100 of 101 deltas (no pauses) on the same server and
reads its CPU from /proc around each phase: CPU per streamed turn is the first phase's per stream,
per relayed delta is the difference over the 100 × 100 extra deltas. The naive baseline
(bench/naive_app.py) gets the same two phases, for comparison. (Deltas 50 ms apart, as a real model
sends them: `python -m bench.paced`.)

`real400` is ramp600 at a real model's pace (issue #28): 400 streams of 40 deltas 50 ms apart,
started evenly over 10 s; besides TTFT it reads the gap between consecutive deltas as the client
receives them (p99 ≤ 250 ms: a stalled event loop shows there first).

`quiet` opens 2,000 streams (over 20 s) whose turn calls a tool that sleeps (bench/quiet_app.py: the
service plus a `wait` tool) and, once all are waiting, reads the server's RSS per open stream (above
what it used before they opened) and its CPU per second over 10 s of that wait; SSE_PING_SECONDS=600,
so no ping falls in the window (a ping is one small write per stream per period).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import asyncpg  # type: ignore[import-untyped]
import httpx
import httpx2

from bench import _metrics
from bench._harness import (
    PG_ADMIN_DSN,
    REDIS_URL,
    Check,
    Stack,
    add_common_options,
    bench_stack,
    check,
    cpu_seconds,
    fmt_ms,
    jsonable,
    log,
    machine_cpu,
    parse_env_overrides,
    percentile,
    print_checks,
    print_table,
    raise_nofile,
    resolve_profile,
    rss_kib,
    run_or_exit,
    wait_for_quiet,
)

SAMPLE_EVERY = 0.1
# The issue's server: a pool of 5 and no overflow, a short pool timeout, Redis on, logging at INFO.
ISSUE_ENV = {"DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "0", "DB_POOL_TIMEOUT": "5", "LOG_LEVEL": "INFO"}
# Option values when neither the command line nor a scenario gives one.
DEFAULTS: dict[str, Any] = {
    "streams": 500, "words": 40, "slow": 0.1, "ramp": 0.0, "redis": False, "stored_after": None,
    "target_ttft_p99": None, "target_gap_p99": None,
    "env": {"DB_POOL_SIZE": "5", "DB_MAX_OVERFLOW": "0", "LOG_LEVEL": "WARNING"},
}  # fmt: skip
SCENARIOS: dict[str, dict[str, Any]] = {
    "ramp600": {"streams": 600, "words": 40, "slow": 0.25, "ramp": 10.0, "target_ttft_p99": 1.0},
    "burst50": {"streams": 50, "words": 40, "slow": 0.25, "stored_after": 0.5},
    "deltas": {"streams": 100},
    "real400": {
        "streams": 400,
        "words": 40,
        "slow": 0.05,
        "ramp": 10.0,
        "target_ttft_p99": 1.0,
        "target_gap_p99": 0.25,
    },
    "quiet": {"streams": 2000, "ramp": 20.0},
}
for _preset in SCENARIOS.values():
    _preset.update(redis=True, env=ISSUE_ENV)
DELTA_PHASES = (1, 101)  # deltas per answer in the two phases of `deltas`


@dataclass
class StreamResult:
    first_start: float | None = None  # seconds from send to the `start` event (turn begun, DB done)
    ttft: float | None = None  # seconds from send to the first `delta`
    duration: float | None = None  # seconds from send to `end`
    deltas: int = 0
    completed: bool = False
    error: str | None = None  # the kind, for counting
    gaps: list[float] = field(default_factory=list)  # seconds between consecutive deltas as received
    tool_use: float | None = None  # seconds from send to the first `tool_use`


@dataclass
class Sample:
    t: float  # seconds since the burst started (negative: before), when the CPU counters were read
    open_streams: int
    pg_connections: int
    server_cpu: float  # cumulative CPU seconds
    machine_busy: int  # cumulative jiffies, all cores
    machine_total: int


@dataclass
class Peaks:
    pg_connections: int = 0
    open_streams: int = 0
    rss_kib: int = 0
    sample_failures: int = 0
    pg_by_state: dict[str, int] = field(default_factory=dict)  # states at the PG peak
    idle_in_transaction: int = 0  # the most connections seen 'idle in transaction' in one sample
    timeline: list[Sample] = field(default_factory=list)
    # GET /healthz (no DB, no threadpool) latency while the burst runs: the server's event-loop lag.
    healthz: list[float] = field(default_factory=list)

    def peak_rate(self, window: float = 1.0) -> tuple[float, float]:
        """Highest (server cores, machine cores) used over any span of at least `window` seconds."""
        cores = os.cpu_count() or 1
        best_server = best_machine = 0.0
        line = self.timeline
        first = 0
        for b in line:
            # Advance to the latest sample still at least `window` before b.
            while first + 1 < len(line) and b.t - line[first + 1].t >= window:
                first += 1
            a = line[first]
            if b.t - a.t >= window and b.machine_total > a.machine_total:
                best_server = max(best_server, (b.server_cpu - a.server_cpu) / (b.t - a.t))
                busy = (b.machine_busy - a.machine_busy) / (b.machine_total - a.machine_total)
                best_machine = max(best_machine, busy * cores)
        return best_server, best_machine


async def one_stream(
    client: httpx2.AsyncClient,
    headers: dict[str, str],
    message: str,
    deadline: float,
    delay: float = 0.0,
    result: StreamResult | None = None,
) -> StreamResult:
    """One streamed turn, sent after `delay` seconds; timings from its own send (into `result`, if given,
    as they come)."""
    result = result if result is not None else StreamResult()
    if delay > 0:
        await asyncio.sleep(delay)
    sent = time.perf_counter()
    try:
        async with (
            asyncio.timeout(deadline),
            client.stream("POST", "/chat", json={"message": message, "stream": True}, headers=headers) as response,
        ):
            if response.status_code != 200:
                body = await response.aread()
                result.error = f"http {response.status_code} {_error_type(body)}"
                return result
            event, last_delta = "", sent
            # Minimal SSE parsing: only `event:` names matter, plus the `data:` of an error.
            async for line in response.aiter_lines():
                if not line:
                    event = ""  # a blank line ends the event
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    now = time.perf_counter()
                    if event == "delta":
                        result.deltas += 1
                        if result.ttft is None:
                            result.ttft = now - sent
                        else:
                            result.gaps.append(now - last_delta)
                        last_delta = now
                    elif event == "start":
                        result.first_start = now - sent
                    elif event == "tool_use" and result.tool_use is None:
                        result.tool_use = now - sent
                    elif event == "end":
                        result.duration = now - sent
                        result.completed = True
                    elif event == "error":
                        result.error = f"error event {_error_type(line[5:].encode())}"
        if not result.completed and result.error is None:
            result.error = "stream closed without end"
    except TimeoutError:
        result.error = f"client deadline {deadline:.0f}s"
    except Exception as exc:  # connection resets, read timeouts...: counted by kind
        result.error = f"exception {type(exc).__name__}"
    return result


def _error_type(body: bytes) -> str:
    try:
        data = json.loads(body)
        return str(data["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "?"


async def sample(stack: Stack, stop: asyncio.Event, peaks: Peaks, origin: list[float], max_seconds: float) -> None:
    """Every 100 ms: PG connections of our APP_NAME, the fake's open streams, server RSS and CPU."""
    pg = await asyncpg.connect(PG_ADMIN_DSN, server_settings={"application_name": "agentchat-bench-sampler"})
    pid = stack.server_pid() or stack.server.pid
    try:
        async with httpx.AsyncClient(base_url=stack.fake_url, timeout=2.0) as fake:
            for _ in range(int(max_seconds / SAMPLE_EVERY) + 1):
                if stop.is_set():
                    break
                tick = time.monotonic()
                try:
                    rows = await pg.fetch(
                        "SELECT state, count(*) AS n FROM pg_stat_activity WHERE application_name = $1 GROUP BY 1",
                        stack.app_name,
                    )
                    total = sum(int(r["n"]) for r in rows)
                    idle = sum(int(r["n"]) for r in rows if str(r["state"]).startswith("idle in transaction"))
                    peaks.idle_in_transaction = max(peaks.idle_in_transaction, idle)
                    if total > peaks.pg_connections:
                        peaks.pg_connections = total
                        peaks.pg_by_state = {str(r["state"]): int(r["n"]) for r in rows}
                    open_streams = int((await fake.get("/_stats")).json()["open_streams"])
                    peaks.open_streams = max(peaks.open_streams, open_streams)
                    # CPU counters and their timestamp read together: under load the awaits above can take seconds.
                    busy, all_jiffies = machine_cpu()
                    server_cpu, now = cpu_seconds(pid), time.monotonic()
                    peaks.timeline.append(Sample(now - origin[0], open_streams, total, server_cpu, busy, all_jiffies))
                except (OSError, httpx.HTTPError, asyncpg.PostgresError, ValueError, KeyError):
                    peaks.sample_failures += 1
                peaks.rss_kib = max(peaks.rss_kib, rss_kib(pid)[0])
                # Sleep the rest of the period; a slow sample under load simply shortens the wait.
                remaining = SAMPLE_EVERY - (time.monotonic() - tick)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(remaining, 0.0))
                except TimeoutError:
                    pass
    finally:
        await pg.close()


async def probe_healthz(stack: Stack, stop: asyncio.Event, peaks: Peaks, max_seconds: float) -> None:
    """GET /healthz back to back (100 ms apart) on its own task, so a slow answer delays no other sample."""
    async with httpx.AsyncClient(base_url=stack.server_url, timeout=30.0) as server:
        for _ in range(int(max_seconds / SAMPLE_EVERY) + 1):
            if stop.is_set():
                return
            sent = time.perf_counter()
            try:
                (await server.get("/healthz")).raise_for_status()
                peaks.healthz.append(time.perf_counter() - sent)
            except httpx.HTTPError:
                peaks.sample_failures += 1
            try:
                await asyncio.wait_for(stop.wait(), timeout=SAMPLE_EVERY)
            except TimeoutError:
                pass


def timeline_rows(peaks: Peaks) -> list[tuple[str, str]]:
    """One row per second: the last sample's gauges and the CPU used in that second."""
    rows: list[tuple[str, str]] = []
    last: Sample | None = None
    for sample in peaks.timeline:
        if last is not None and math.floor(sample.t) == math.floor(last.t):
            continue
        if last is not None and sample.t > last.t:
            cores = os.cpu_count() or 1
            server = (sample.server_cpu - last.server_cpu) / (sample.t - last.t)
            span = sample.machine_total - last.machine_total
            machine = (sample.machine_busy - last.machine_busy) / span * cores if span else math.nan
            rows.append(
                (
                    f"t={sample.t:5.1f}s",
                    f"fake open {sample.open_streams:5d}   pg conns {sample.pg_connections}   "
                    f"server cpu {server:4.2f}   machine cpu {machine:4.2f} cores",
                )
            )
        last = sample
    return rows


def connect_bench_db(stack: Stack) -> Any:
    """An asyncpg connection (awaitable) to the bench database itself."""
    return asyncpg.connect(stack.db_url.replace("postgresql+asyncpg://", "postgresql://", 1))


async def user_messages_at(conn: Any, origin: float, after: float) -> tuple[int, float]:
    """(user messages stored, when the count was taken) `after` seconds past `origin` (monotonic)."""
    await asyncio.sleep(max(0.0, origin + after - time.monotonic()))
    asked = time.monotonic() - origin
    return int(await conn.fetchval("SELECT count(*) FROM messages WHERE role = 'user'")), asked


async def stored_statuses(stack: Stack) -> dict[str, int]:
    """Assistant messages by status in the bench database: every turn should be `complete`."""
    conn = await connect_bench_db(stack)
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM messages WHERE role = 'assistant' GROUP BY 1")
        return {str(r["status"]): int(r["n"]) for r in rows}
    finally:
        await conn.close()


def keep_log(args: argparse.Namespace) -> Path | None:
    return Path(args.server_log).resolve() if args.server_log else None


def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(args.env)
    if args.redis:
        env.setdefault("REDIS_URL", REDIS_URL)
    return env  # without --redis, REDIS_URL stays unset: clean_env drops it


def stream_client(url: str, n: int) -> httpx2.AsyncClient:
    """The streams' client: the SDK's DefaultAioHttpClient (httpx2 on aiohttp), as the service's model
    client, a cheap one since it shares the two cores with the servers (httpx's own took 70% of a
    core in ramp600). Idle connections go after 1 s, before the server's 5 s keep-alive could close
    one as the next phase reuses it."""
    limits = httpx2.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=1.0)
    timeout = httpx2.Timeout(60.0, connect=30.0, pool=60.0)
    return anthropic.DefaultAioHttpClient(base_url=url, limits=limits, timeout=timeout)


def error_kinds(results: list[StreamResult]) -> dict[str, int]:
    errors: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    return errors


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.scenario == "quiet":
        return await run_quiet(args)
    return await (run_deltas(args) if args.scenario == "deltas" else run_burst(args))


QUIET_SETTLE = 5.0  # after the last stream was started, until every one is waiting on the tool
QUIET_WINDOW = 10.0  # seconds of the wait over which idle CPU is read


async def run_quiet(args: argparse.Namespace) -> dict[str, Any]:
    n: int = args.streams
    env = {**server_env(args), "SSE_PING_SECONDS": "600"}
    wait_s = args.ramp + QUIET_SETTLE + QUIET_WINDOW + 5
    message = f'[[tool:wait {{"seconds": {wait_s:g}}}]] bench'
    out: dict[str, Any] = {"scenario": "quiet", "streams_requested": n, "message": message, "ramp_s": args.ramp}
    out["env_overrides"] = env
    async with bench_stack(env, server_app="bench.quiet_app:app", keep_log=keep_log(args)) as stack:
        headers = {"Authorization": f"Bearer {stack.api_key}", "Accept": "text/event-stream"}
        out["background_load_cores"] = await wait_for_quiet(args.wait_quiet)
        pid = stack.server_pid() or stack.server.pid
        async with stream_client(stack.server_url, n) as client:
            warm = await asyncio.gather(*(one_stream(client, headers, "[[words:1]] warm", 60.0) for _ in range(20)))
            out["warm_up_errors"] = error_kinds(warm)
            out["warm_up_turns"] = len(warm)
            await asyncio.sleep(2.0)  # idle connections go, the server settles
            rss_before = rss_kib(pid)[0]
            cpu_idle_before = cpu_seconds(pid)
            await asyncio.sleep(QUIET_WINDOW / 2)
            out["cpu_idle_no_streams"] = (cpu_seconds(pid) - cpu_idle_before) / (QUIET_WINDOW / 2)
            log(f"opening {n} streams over {args.ramp:g} s, each waiting {wait_s:g} s on a tool")
            results = [StreamResult() for _ in range(n)]
            streams = asyncio.gather(
                *(
                    one_stream(client, headers, message, args.deadline + wait_s, i * args.ramp / n, results[i])
                    for i in range(n)
                )
            )
            await asyncio.sleep(args.ramp + QUIET_SETTLE)
            waiting = sum(r.tool_use is not None and not r.completed and r.error is None for r in results)
            rss_open = rss_kib(pid)[0]
            cpu_before = cpu_seconds(pid)
            await asyncio.sleep(QUIET_WINDOW)
            cpu_window = cpu_seconds(pid) - cpu_before
            still = sum(r.tool_use is not None and not r.completed and r.error is None for r in results)
            log(f"{waiting} streams waiting ({still} after {QUIET_WINDOW:g} s); waiting for them to finish")
            await streams
        stored = await stored_statuses(stack)
    errors = error_kinds(results)
    out.update(
        {
            "waiting_streams": min(waiting, still),
            "rss_before_mib": rss_before / 1024,
            "rss_open_mib": rss_open / 1024,
            "rss_per_stream_kib": (rss_open - rss_before) / max(waiting, 1),
            "cpu_per_s_quiet": cpu_window / QUIET_WINDOW,
            "completed": sum(r.completed for r in results),
            "errors": sum(errors.values()),
            "errors_by_kind": errors,
            "stored_assistant_messages": stored,
            "server_log": stack.log_report.summary(n) if stack.log_report else {},
        }
    )
    return out


QUIET_TARGET_RSS_KIB = 100.0  # per open stream waiting on a tool
QUIET_TARGET_CPU = 0.05  # cores while 2,000 streams wait (pings aside)


def print_quiet(r: dict[str, Any], args: argparse.Namespace) -> None:
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors_by_kind"].items())) or "none"
    rows = [
        ("message", r["message"]),
        ("streams", f"{r['streams_requested']} opened evenly over {r['ramp_s']:g} s; SSE_PING_SECONDS=600"),
        ("background load before run", f"{r['background_load_cores']:.2f} cores (other processes)"),
        ("waiting on the tool through the window", str(r["waiting_streams"])),
        ("server RSS before / with them open", f"{r['rss_before_mib']:.1f} MiB / {r['rss_open_mib']:.1f} MiB"),
        ("RSS per open stream", f"{r['rss_per_stream_kib']:.1f} KiB (the growth over the streams waiting)"),
        ("server CPU while they wait", f"{r['cpu_per_s_quiet'] * 1000:.1f} ms per second ({QUIET_WINDOW:g} s window)"),
        ("server CPU idle, no streams", f"{r['cpu_idle_no_streams'] * 1000:.1f} ms per second"),
        ("completed (got `end`)", f"{r['completed']}; errors {r['errors']} ({errs})"),
        ("stored assistant messages", f"{r['stored_assistant_messages']} ({r['warm_up_turns']} of them warm-up turns)"),
        ("server log", f"{r['server_log'].get('errors')} errors, {r['server_log'].get('tracebacks')} tracebacks"),
    ]
    print_table(f"bench.streams --scenario quiet: {r['streams_requested']} open streams waiting on a slow tool", rows)
    print_checks("summary", checks_quiet(r))


def checks_quiet(r: dict[str, Any]) -> list[Check]:
    n = r["streams_requested"]
    complete = r["stored_assistant_messages"].get("complete", 0) - r["warm_up_turns"]  # theirs aside
    return [
        Check("waiting on the tool at once", f"{r['waiting_streams']}/{n}", f"{n}/{n}", r["waiting_streams"] == n),
        check("RSS per open stream", r["rss_per_stream_kib"], QUIET_TARGET_RSS_KIB, at_most=True, unit=" KiB"),
        check(
            "server CPU while they wait", r["cpu_per_s_quiet"], QUIET_TARGET_CPU, at_most=True, unit=" cores", digits=3
        ),
        Check(
            "completed and stored",
            f"{r['completed']}/{n} completed, {complete}/{n} stored",
            f"{n}/{n}",
            r["completed"] == n and complete == n,
        ),
    ]


async def run_burst(args: argparse.Namespace) -> dict[str, Any]:
    n: int = args.streams
    message = f"[[words:{args.words}]] [[slow:{args.slow}]] bench"
    env = server_env(args)
    results: list[StreamResult] = []
    peaks = Peaks()
    stored_early: tuple[int, float] | None = None
    async with bench_stack(env, profile=resolve_profile(args.profile), keep_log=keep_log(args)) as stack:
        headers = {"Authorization": f"Bearer {stack.api_key}", "Accept": "text/event-stream"}
        background = await wait_for_quiet(args.wait_quiet)
        db = await connect_bench_db(stack)  # before the burst: counting must not wait for a connection
        try:
            async with stream_client(stack.server_url, n) as client:
                stop = asyncio.Event()
                origin = [time.monotonic()]  # moved to the burst's start below; samples before it are negative
                span = args.deadline + args.ramp + 30
                sampler = asyncio.create_task(sample(stack, stop, peaks, origin, max_seconds=span))
                await asyncio.sleep(SAMPLE_EVERY)  # a baseline sample before the burst
                how = f"evenly over {args.ramp:g} s" if args.ramp else "at once"
                log(f"starting {n} streams {how}: {message!r}")
                metrics_before = await _metrics.scrape(stack.server_url)
                # CPU per process over the burst: on 2 shared cores, who is eating them matters.
                server_pid = stack.server_pid() or stack.server.pid
                cpu_before = (cpu_seconds(server_pid), cpu_seconds(stack.fake.pid), time.process_time())
                origin[0] = time.monotonic()
                prober = asyncio.create_task(probe_healthz(stack, stop, peaks, max_seconds=span))
                counter = (
                    asyncio.create_task(user_messages_at(db, origin[0], args.stored_after))
                    if args.stored_after is not None
                    else None
                )
                started = time.perf_counter()
                try:
                    results = await asyncio.gather(
                        *(one_stream(client, headers, message, args.deadline, i * args.ramp / n) for i in range(n))
                    )
                finally:
                    wall = time.perf_counter() - started
                    cpu_after = (cpu_seconds(server_pid), cpu_seconds(stack.fake.pid), time.process_time())
                    await asyncio.sleep(2 * SAMPLE_EVERY)  # let the sampler see the pool settle
                    stop.set()
                    await asyncio.wait_for(asyncio.gather(sampler, prober), timeout=40)
                    if counter is not None:
                        stored_early = await counter
                metrics = _metrics.Window(metrics_before, await _metrics.scrape(stack.server_url)).summary(n)
        finally:
            await db.close()
        pid = stack.server_pid()
        hwm = rss_kib(pid)[1] if pid is not None else 0
        async with httpx.AsyncClient(base_url=stack.fake_url, timeout=5.0) as fake:
            fake_stats = (await fake.get("/_stats")).json()
        try:
            stored = await stored_statuses(stack)
        except (OSError, asyncpg.PostgresError) as exc:
            stored = {"unavailable": 0}
            log(f"could not count stored messages: {exc!r}")

    report = stack.log_report
    errors = error_kinds(results)
    ttfts = [r.ttft for r in results if r.ttft is not None]
    starts = [r.first_start for r in results if r.first_start is not None]
    durations = [r.duration for r in results if r.duration is not None]
    gaps = [gap for r in results for gap in r.gaps]
    out: dict[str, Any] = {
        "scenario": args.scenario,
        "streams_requested": n,
        "message": message,
        "ramp_s": args.ramp,
        "redis": args.redis,
        "env_overrides": args.env,
        "completed": sum(r.completed for r in results),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
        "deltas_total": sum(r.deltas for r in results),
        "peak_open_streams_sampled": peaks.open_streams,
        "fake_max_open_streams": fake_stats.get("max_open_streams"),
        "fake_rejections": len(fake_stats.get("rejections", [])),
        "start_event_p50_s": percentile(starts, 50),
        "start_event_p99_s": percentile(starts, 99),
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p90_s": percentile(ttfts, 90),
        "ttft_p99_s": percentile(ttfts, 99),
        "ttft_max_s": max(ttfts, default=math.nan),
        "gap_p50_s": percentile(gaps, 50),
        "gap_p99_s": percentile(gaps, 99),
        "gap_max_s": max(gaps, default=math.nan),
        "target_gap_p99_s": args.target_gap_p99,
        "duration_p50_s": percentile(durations, 50),
        "duration_max_s": max(durations, default=math.nan),
        "ideal_duration_s": args.words * args.slow,
        "wall_s": wall,
        "background_load_cores": background,
        "cpu_s": {
            name: after - before
            for name, before, after in zip(("server", "fake", "client"), cpu_before, cpu_after, strict=True)
        },
        "peak_pg_connections": peaks.pg_connections,
        "pg_states_at_peak": peaks.pg_by_state,
        "idle_in_transaction_max": peaks.idle_in_transaction,
        "pool_size": int(env.get("DB_POOL_SIZE", "10")),
        "pool_overflow": int(env.get("DB_MAX_OVERFLOW", "5")),
        "metrics": metrics,
        "stored_after_s": args.stored_after,
        "user_messages_early": stored_early[0] if stored_early else None,
        "user_messages_counted_at_s": stored_early[1] if stored_early else None,
        "target_ttft_p99_s": args.target_ttft_p99,
        "server_rss_peak_mib": peaks.rss_kib / 1024,
        "server_vmhwm_mib": hwm / 1024,
        "samples": len(peaks.timeline),
        "healthz_p50_s": percentile(peaks.healthz, 50),
        "healthz_max_s": max(peaks.healthz, default=math.nan),
        "pg_xacts": stack.xacts_used(),
        "peak_server_cores_1s": peaks.peak_rate()[0],
        "peak_machine_cores_1s": peaks.peak_rate()[1],
        "timeline": [f"{label}  {value}" for label, value in timeline_rows(peaks)],
        "sample_failures": peaks.sample_failures,
        "stored_assistant_messages": stored,
        # A client that heard `end` must find the answer stored `complete` (its next turn replays it).
        "answered_not_stored": max(0, sum(r.completed for r in results) - stored.get("complete", 0)),
        "server_log": report.summary(n) if report else {},
        "per_stream": [asdict(r) for r in results] if args.per_stream else None,
    }
    return out


async def delta_phase(
    client: httpx2.AsyncClient, pid: int, headers: dict[str, str], words: int, n: int
) -> dict[str, Any]:
    """n streams of `words` deltas at once; the server's CPU over them, from /proc."""
    message = f"[[words:{words}]] bench"
    cpu_before = cpu_seconds(pid)
    started = time.perf_counter()
    results = await asyncio.gather(*(one_stream(client, headers, message, deadline=120.0) for _ in range(n)))
    wall = time.perf_counter() - started
    await asyncio.sleep(0.25)  # anything the server still does for these turns (an idle server uses ~nothing)
    errors = error_kinds(results)
    return {
        "words": words,
        "cpu_s": cpu_seconds(pid) - cpu_before,
        "wall_s": wall,
        "completed": sum(r.completed for r in results),
        "deltas_received": sum(r.deltas for r in results),
        "errors": sum(errors.values()),
        "errors_by_kind": errors,
    }


async def run_deltas(args: argparse.Namespace) -> dict[str, Any]:
    n: int = args.streams
    env = server_env(args)
    out: dict[str, Any] = {"scenario": args.scenario, "streams": n, "env_overrides": args.env, "servers": {}}
    async with bench_stack(env, profile=resolve_profile(args.profile), keep_log=keep_log(args), naive=True) as stack:
        assert stack.naive is not None
        headers = {"Authorization": f"Bearer {stack.api_key}", "Accept": "text/event-stream"}
        out["background_load_cores"] = await wait_for_quiet(args.wait_quiet)
        servers = {
            "service": (stack.server_url, stack.server_pid() or stack.server.pid),
            "naive": (stack.naive_url, stack.naive.pid),
        }
        for name, (url, pid) in servers.items():
            async with stream_client(url, n) as client:
                log(f"{name}: warm-up, then {n} streams of {' and then of '.join(map(str, DELTA_PHASES))} deltas")
                await delta_phase(client, pid, headers, DELTA_PHASES[0], n)  # opens the n keep-alive connections
                before = await _metrics.scrape(url) if name == "service" else {}
                phases = [await delta_phase(client, pid, headers, DELTA_PHASES[0], n)]
                window = _metrics.Window(before, await _metrics.scrape(url)) if name == "service" else None
                phases.append(await delta_phase(client, pid, headers, DELTA_PHASES[1], n))
            extra = (DELTA_PHASES[1] - DELTA_PHASES[0]) * n
            out["servers"][name] = {
                "phases": phases,
                "cpu_per_turn_ms": phases[0]["cpu_s"] / n * 1000,
                "cpu_per_delta_us": (phases[1]["cpu_s"] - phases[0]["cpu_s"]) / extra * 1e6,
                "metrics": window.summary(n) if window is not None else None,
            }
    out["server_log"] = stack.log_report.summary(n * 3) if stack.log_report else {}
    out["naive_log_tail"] = stack.naive_log_tail
    out["target_turn_ms"], out["target_delta_us"] = args.target_turn_ms, args.target_delta_us
    return out


def print_deltas(r: dict[str, Any], args: argparse.Namespace) -> None:
    n = r["streams"]
    rows: list[tuple[str, str]] = [
        ("server settings", ", ".join(f"{k}={v}" for k, v in r["env_overrides"].items()) or "none"),
        ("background load before run", f"{r['background_load_cores']:.2f} cores (other processes)"),
    ]
    for name, info in r["servers"].items():
        for phase in info["phases"]:
            errs = ", ".join(f"{k}: {v}" for k, v in sorted(phase["errors_by_kind"].items())) or "none"
            rows.append(
                (
                    f"{name}: {n} × {phase['words']} deltas",
                    f"CPU {phase['cpu_s'] * 1000:.0f} ms, wall {phase['wall_s']:.2f} s, "
                    f"completed {phase['completed']}, deltas received {phase['deltas_received']}, "
                    f"errors {phase['errors']} ({errs})",
                )
            )
        rows.append((f"{name}: CPU per streamed turn", f"{info['cpu_per_turn_ms']:.2f} ms"))
        rows.append((f"{name}: CPU per relayed delta", f"{info['cpu_per_delta_us']:.1f} µs"))
        if info["metrics"] is not None:
            rows += [(f"{name}: {label}", value) for label, value in _metrics.rows(info["metrics"])]
    log_info = r["server_log"]
    rows.append(("service log", f"{log_info.get('errors')} errors, {log_info.get('tracebacks')} tracebacks"))
    print_table("bench.streams --scenario deltas: CPU per streamed turn and per relayed delta (from /proc)", rows)
    for event, count in sorted(log_info.get("events", {}).items()):
        print(f"  log {event}: {count}")
    if r["naive_log_tail"]:
        print(f"  naive app log ends:\n{r['naive_log_tail']}")
    print_checks("summary", checks(r, args))


def checks_deltas(r: dict[str, Any]) -> list[Check]:
    service = r["servers"]["service"]
    errors = sum(phase["errors"] for phase in service["phases"])
    return [
        check(
            "service CPU per streamed turn",
            service["cpu_per_turn_ms"],
            r["target_turn_ms"],
            at_most=True,
            unit=" ms",
            digits=2,
        ),
        check(
            "service CPU per relayed delta", service["cpu_per_delta_us"], r["target_delta_us"], at_most=True, unit=" µs"
        ),
        Check("errors (service, both phases)", str(errors), "0", errors == 0),
    ]


def checks(r: dict[str, Any], args: argparse.Namespace) -> list[Check]:
    if r["scenario"] == "quiet":
        return checks_quiet(r)
    return checks_deltas(r) if r["scenario"] == "deltas" else checks_burst(r)


def print_report(r: dict[str, Any], args: argparse.Namespace) -> None:
    if r["scenario"] == "quiet":
        print_quiet(r, args)
        return
    (print_deltas if r["scenario"] == "deltas" else print_burst)(r, args)


def passed(r: dict[str, Any]) -> bool:
    """No stream failed, and every answered turn was stored (deltas: no stream failed)."""
    if r["scenario"] == "deltas":
        return all(phase["errors"] == 0 for info in r["servers"].values() for phase in info["phases"])
    if r["scenario"] == "quiet":
        return bool(r["errors"] == 0 and r["completed"] == r["streams_requested"])
    return bool(r["errors"] == 0 and r["answered_not_stored"] == 0)


def print_burst(r: dict[str, Any], args: argparse.Namespace) -> None:
    limit = r["pool_size"] + r["pool_overflow"]
    pg_ok = "OK" if r["peak_pg_connections"] <= limit else "OVER THE POOL"
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors_by_kind"].items())) or "none"
    rows = [
        ("message", r["message"]),
        ("server settings", ", ".join(f"{k}={v}" for k, v in r["env_overrides"].items()) or "none"),
        ("redis", "on" if r["redis"] else "off"),
        (
            "streams requested",
            f"{r['streams_requested']} " + (f"evenly over {r['ramp_s']:g} s" if r["ramp_s"] else "at once"),
        ),
        ("completed (got `end`)", str(r["completed"])),
        ("errors", f"{r['errors']} ({errs})"),
        (
            "peak streams in flight at fake",
            f"{r['fake_max_open_streams']} of {r['streams_requested']} (fake's own gauge"
            f"{'' if r['fake_max_open_streams'] == r['streams_requested'] or r['ramp_s'] else ': NOT all at once'}); "
            f"{r['peak_open_streams_sampled']} sampled every 100 ms",
        ),
        ("time to `start` p50 / p99", f"{fmt_ms(r['start_event_p50_s'])} / {fmt_ms(r['start_event_p99_s'])}"),
        ("TTFT p50", fmt_ms(r["ttft_p50_s"])),
        ("TTFT p90", fmt_ms(r["ttft_p90_s"])),
        ("TTFT p99", fmt_ms(r["ttft_p99_s"])),
        ("TTFT max", fmt_ms(r["ttft_max_s"])),
        (
            "gap between deltas at the client p50 / p99 / max",
            f"{fmt_ms(r['gap_p50_s'])} / {fmt_ms(r['gap_p99_s'])} / {fmt_ms(r['gap_max_s'])}",
        ),
        (
            "stream duration p50 / max",
            f"{r['duration_p50_s']:.2f} s / {r['duration_max_s']:.2f} s (ideal {r['ideal_duration_s']:.1f} s)",
        ),
        ("total wall time", f"{r['wall_s']:.2f} s"),
        ("background load before the burst", f"{r['background_load_cores']:.2f} cores (other processes)"),
        (
            "CPU during the burst",
            ", ".join(f"{k} {v:.1f} s ({v / r['wall_s']:.0%} of a core)" for k, v in r["cpu_s"].items())
            + f"; {os.cpu_count()} cores",
        ),
        (
            "peak CPU over any 1 s",
            f"server {r['peak_server_cores_1s']:.2f} cores, whole machine {r['peak_machine_cores_1s']:.2f} cores",
        ),
        (
            "server CPU per turn",
            f"{r['cpu_s']['server'] / r['streams_requested'] * 1000:.1f} ms (its whole burst / streams requested)",
        ),
        (
            "peak PG connections",
            f"{r['peak_pg_connections']} (pool {r['pool_size']}, overflow {r['pool_overflow']}): {pg_ok}"
            f"  states {r['pg_states_at_peak']}",
        ),
        ("most 'idle in transaction' in a sample", str(r["idle_in_transaction_max"])),
        ("server RSS at peak", f"{r['server_rss_peak_mib']:.1f} MiB (VmHWM {r['server_vmhwm_mib']:.1f} MiB)"),
        ("stored assistant messages", str(r["stored_assistant_messages"])),
        ("answered (`end`) but not stored complete", str(r["answered_not_stored"])),
        (
            "GET /healthz during the burst",
            f"p50 {fmt_ms(r['healthz_p50_s'])}, max {fmt_ms(r['healthz_max_s'])} (event-loop lag proxy)",
        ),
        ("PG transactions (whole run)", str(r["pg_xacts"])),
        ("fake rejections (invalid requests)", str(r["fake_rejections"])),
        (
            "server log",
            f"{r['server_log'].get('errors')} errors, {r['server_log'].get('tracebacks')} tracebacks, "
            f"{r['server_log'].get('warnings')} warnings",
        ),
        ("samples (failed)", f"{r['samples']} ({r['sample_failures']})"),
        *_metrics.rows(r["metrics"]),
    ]
    if r["user_messages_early"] is not None:
        rows.append(
            (
                f"user messages stored {r['stored_after_s']:g} s after the burst",
                f"{r['user_messages_early']} of {r['streams_requested']} "
                f"(counted at {r['user_messages_counted_at_s']:.2f} s)",
            )
        )
    name = f"--scenario {r['scenario']}" if r["scenario"] else f"{r['streams_requested']} concurrent SSE turns"
    print_table(f"bench.streams — {name}, 1 worker, pool {r['pool_size']}", rows)
    for event, count in sorted(r["server_log"].get("events", {}).items()):
        print(f"  log {event}: {count}")
    if args.timeline:
        print("\ntimeline (one line a second)")
        for line in r["timeline"]:
            print(f"  {line}")
    print_checks("summary", checks(r, args))
    print(f"\nresult: {'PASS' if passed(r) else 'FAIL'}")


def checks_burst(r: dict[str, Any]) -> list[Check]:
    n, limit = r["streams_requested"], r["pool_size"] + r["pool_overflow"]
    complete = r["stored_assistant_messages"].get("complete", 0)
    out = [
        Check(
            "completed and stored",
            f"{r['completed']}/{n} completed, {complete}/{n} stored",
            f"{n}/{n}",
            r["completed"] == n and complete == n,
        ),
        Check("errors", str(r["errors"]), "0", r["errors"] == 0),
    ]
    if r["target_ttft_p99_s"] is not None:
        out.append(check("TTFT p99", r["ttft_p99_s"], r["target_ttft_p99_s"], at_most=True, unit=" s", digits=2))
    if r.get("target_gap_p99_s") is not None:
        gap = r["gap_p99_s"]
        out.append(check("gap between deltas p99", gap, r["target_gap_p99_s"], at_most=True, unit=" s", digits=3))
    out.append(check("peak PG connections", r["peak_pg_connections"], limit, at_most=True, digits=0))
    if r["user_messages_early"] is not None:
        early = r["user_messages_early"]
        label = f"user messages stored {r['stored_after_s']:g} s after the burst"
        out.append(Check(label, f"{early}/{n}", f"{n}/{n}", early == n))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.streams", description="Many SSE turns in flight at once on a tiny pool."
    )
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        help="a preset of the issue (options given as well override it); see the module docstring",
    )
    parser.add_argument(
        "--streams", type=int, help="streaming turns (default 500; ramp600 600, burst50 50, deltas 100)"
    )
    parser.add_argument("--words", type=int, help="deltas per answer (default 40)")
    parser.add_argument("--slow", type=float, help="seconds before each delta (default 0.1; ramp600/burst50 0.25)")
    parser.add_argument(
        "--ramp", type=float, help="start the streams evenly over this many seconds (default 0: at once)"
    )
    parser.add_argument(
        "--redis", action=argparse.BooleanOptionalAction, default=None, help="set REDIS_URL (default off; scenarios on)"
    )
    parser.add_argument(
        "--stored-after", type=float, metavar="SECONDS", help="count the user messages stored this long after the send"
    )
    parser.add_argument("--target-ttft-p99", type=float, metavar="SECONDS", help="PASS/MISS on TTFT p99 (ramp600: 1)")
    parser.add_argument(
        "--target-gap-p99", type=float, metavar="SECONDS", help="PASS/MISS on the delta gap p99 (real400: 0.25)"
    )
    parser.add_argument("--target-turn-ms", type=float, default=6.0, help="deltas: CPU per streamed turn (6 ms)")
    parser.add_argument("--target-delta-us", type=float, default=100.0, help="deltas: CPU per relayed delta (100 µs)")
    parser.add_argument("--deadline", type=float, default=120.0, help="per-stream client deadline, seconds")
    parser.add_argument("--per-stream", action="store_true", help="include every stream's timings in --json")
    parser.add_argument("--timeline", action="store_true", help="also print one line of gauges per second")
    add_common_options(
        parser, profile_help="run the server under py-spy (flame graph; a .txt path gives collapsed stacks)"
    )
    args = parser.parse_args(argv)
    try:
        explicit_env = parse_env_overrides(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    preset = {**DEFAULTS, **SCENARIOS.get(args.scenario or "", {})}
    for name, value in preset.items():
        if name != "env" and getattr(args, name) is None:
            setattr(args, name, value)
    args.env = {**preset["env"], **explicit_env}
    if not 1 <= args.streams <= 5000:
        parser.error("--streams must be between 1 and 5000")
    if args.ramp < 0:
        parser.error("--ramp must not be negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nofile = raise_nofile()  # before any subprocess: they inherit it
    if nofile < 2 * args.streams + 200:
        log(f"RLIMIT_NOFILE is {nofile}; {args.streams} streams may run out of file descriptors")
    result = run_or_exit(lambda: run(args))
    if args.json:
        print(json.dumps(jsonable(result), indent=2))
    else:
        print_report(result, args)
    return 0 if passed(result) else 1


if __name__ == "__main__":
    sys.exit(main())
