"""Many SSE turns in flight at once against one uvicorn worker with a 5-connection database pool.

    python -m bench.streams                 # 500 streams
    python -m bench.streams --streams 1000 --json

Every stream asks the fake for `[[words:40]] [[slow:0.1]]` (about 4 s of deltas), all are started
together, so they all overlap. Proves: no connection is held across the model call (peak PG
connections stay within the pool), the fake really saw N streams open at once, and how long
users wait for the first token. Exit code 0 iff no stream failed (HTTP status, `error` event,
exception, no `end`) and every answered turn was stored `complete` in the database.
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

import asyncpg  # type: ignore[import-untyped]
import httpx

from bench._harness import (
    DEFAULT_PROFILE,
    PG_ADMIN_DSN,
    Stack,
    bench_stack,
    cpu_seconds,
    fmt_ms,
    jsonable,
    log,
    machine_cpu,
    parse_env_overrides,
    percentile,
    print_table,
    raise_nofile,
    resolve_profile,
    rss_kib,
    run_or_exit,
    wait_for_quiet,
)

POOL_SIZE = 5
SAMPLE_EVERY = 0.1


@dataclass
class StreamResult:
    first_start: float | None = None  # seconds from send to the `start` event (turn begun, DB done)
    ttft: float | None = None  # seconds from send to the first `delta`
    duration: float | None = None  # seconds from send to `end`
    deltas: int = 0
    completed: bool = False
    error: str | None = None  # the kind, for counting


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


async def one_stream(client: httpx.AsyncClient, headers: dict[str, str], message: str, deadline: float) -> StreamResult:
    result = StreamResult()
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
            event = ""
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
                    elif event == "start":
                        result.first_start = now - sent
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


async def stored_statuses(stack: Stack) -> dict[str, int]:
    """Assistant messages by status in the bench database: every turn should be `complete`."""
    conn = await asyncpg.connect(stack.db_url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM messages WHERE role = 'assistant' GROUP BY 1")
        return {str(r["status"]): int(r["n"]) for r in rows}
    finally:
        await conn.close()


def keep_log(args: argparse.Namespace) -> Path | None:
    return Path(args.server_log).resolve() if args.server_log else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n: int = args.streams
    message = f"[[words:{args.words}]] [[slow:{args.slow}]] bench"
    server_env = {
        "DB_POOL_SIZE": str(POOL_SIZE),
        "DB_MAX_OVERFLOW": "0",
        "LOG_LEVEL": "WARNING",
        **args.env,
    }  # REDIS_URL stays unset: clean_env drops it
    results: list[StreamResult] = []
    peaks = Peaks()
    async with bench_stack(server_env, profile=resolve_profile(args.profile), keep_log=keep_log(args)) as stack:
        headers = {"Authorization": f"Bearer {stack.api_key}", "Accept": "text/event-stream"}
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        timeout = httpx.Timeout(60.0, connect=30.0, pool=60.0)
        background = await wait_for_quiet(args.wait_quiet)
        async with httpx.AsyncClient(base_url=stack.server_url, limits=limits, timeout=timeout) as client:
            stop = asyncio.Event()
            origin = [time.monotonic()]  # moved to the burst's start below; samples before it are negative
            sampler = asyncio.create_task(sample(stack, stop, peaks, origin, max_seconds=args.deadline + 30))
            await asyncio.sleep(SAMPLE_EVERY)  # a baseline sample before the burst
            log(f"starting {n} streams at once: {message!r}")
            # CPU per process over the burst: on 2 shared cores, who is eating them matters.
            server_pid = stack.server_pid() or stack.server.pid
            cpu_before = (cpu_seconds(server_pid), cpu_seconds(stack.fake.pid), time.process_time())
            origin[0] = time.monotonic()
            prober = asyncio.create_task(probe_healthz(stack, stop, peaks, max_seconds=args.deadline + 30))
            started = time.perf_counter()
            try:
                results = await asyncio.gather(*(one_stream(client, headers, message, args.deadline) for _ in range(n)))
            finally:
                wall = time.perf_counter() - started
                cpu_after = (cpu_seconds(server_pid), cpu_seconds(stack.fake.pid), time.process_time())
                await asyncio.sleep(2 * SAMPLE_EVERY)  # let the sampler see the pool settle
                stop.set()
                await asyncio.wait_for(asyncio.gather(sampler, prober), timeout=40)
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
    errors: dict[str, int] = {}
    for r in results:
        if r.error is not None:
            errors[r.error] = errors.get(r.error, 0) + 1
    ttfts = [r.ttft for r in results if r.ttft is not None]
    starts = [r.first_start for r in results if r.first_start is not None]
    durations = [r.duration for r in results if r.duration is not None]
    out: dict[str, Any] = {
        "streams_requested": n,
        "message": message,
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
        "pool_size": int(server_env["DB_POOL_SIZE"]),
        "pool_overflow": int(server_env["DB_MAX_OVERFLOW"]),
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
        "server_log_errors": report.errors if report else None,
        "server_log_warnings": report.warnings if report else None,
        "server_log_tracebacks": report.tracebacks if report else None,
        "server_log_events": report.by_event if report else {},
        "server_log_samples": report.samples if report else [],
        "per_stream": [asdict(r) for r in results] if args.per_stream else None,
    }
    return out


def passed(r: dict[str, Any]) -> bool:
    """No stream failed, and every answered turn was stored."""
    return bool(r["errors"] == 0 and r["answered_not_stored"] == 0)


def print_report(r: dict[str, Any], *, timeline: bool) -> None:
    limit = r["pool_size"] + r["pool_overflow"]
    pg_ok = "OK" if r["peak_pg_connections"] <= limit else "OVER THE POOL"
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(r["errors_by_kind"].items())) or "none"
    rows = [
        ("message", r["message"]),
        ("extra server settings", ", ".join(f"{k}={v}" for k, v in r["env_overrides"].items()) or "none"),
        ("streams requested", str(r["streams_requested"])),
        ("completed (got `end`)", str(r["completed"])),
        ("errors", f"{r['errors']} ({errs})"),
        (
            "peak streams in flight at fake",
            f"{r['fake_max_open_streams']} of {r['streams_requested']} (fake's own gauge"
            f"{'' if r['fake_max_open_streams'] == r['streams_requested'] else ': NOT all in flight at once'}); "
            f"{r['peak_open_streams_sampled']} sampled every 100 ms",
        ),
        ("time to `start` p50 / p99", f"{fmt_ms(r['start_event_p50_s'])} / {fmt_ms(r['start_event_p99_s'])}"),
        ("TTFT p50", fmt_ms(r["ttft_p50_s"])),
        ("TTFT p90", fmt_ms(r["ttft_p90_s"])),
        ("TTFT p99", fmt_ms(r["ttft_p99_s"])),
        ("TTFT max", fmt_ms(r["ttft_max_s"])),
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
            "peak PG connections",
            f"{r['peak_pg_connections']} (pool {r['pool_size']}, overflow {r['pool_overflow']}): {pg_ok}"
            f"  states {r['pg_states_at_peak']}",
        ),
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
            f"{r['server_log_errors']} errors, {r['server_log_tracebacks']} tracebacks, "
            f"{r['server_log_warnings']} warnings",
        ),
        ("samples (failed)", f"{r['samples']} ({r['sample_failures']})"),
    ]
    rows.insert(
        12,
        (
            "peak CPU over any 1 s",
            f"server {r['peak_server_cores_1s']:.2f} cores, whole machine {r['peak_machine_cores_1s']:.2f} cores",
        ),
    )
    title = f"bench.streams — {r['streams_requested']} concurrent SSE turns, 1 worker, pool {r['pool_size']}"
    print_table(title, rows)
    for event, count in sorted(r["server_log_events"].items()):
        print(f"  log {event}: {count}")
    if timeline:
        print("\ntimeline (one line a second)")
        for line in r["timeline"]:
            print(f"  {line}")
    print(f"\nresult: {'PASS' if passed(r) else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.streams", description="Many SSE turns in flight at once on a tiny pool."
    )
    parser.add_argument("--streams", type=int, default=500, help="concurrent streaming turns (default 500)")
    parser.add_argument("--words", type=int, default=40, help="deltas per answer (default 40)")
    parser.add_argument("--slow", type=float, default=0.1, help="seconds before each delta (default 0.1)")
    parser.add_argument("--deadline", type=float, default=120.0, help="per-stream client deadline, seconds")
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
    parser.add_argument("--per-stream", action="store_true", help="include every stream's timings in --json")
    parser.add_argument("--timeline", action="store_true", help="also print one line of gauges per second")
    parser.add_argument(
        "--profile",
        nargs="?",
        const=str(DEFAULT_PROFILE),
        default=None,
        metavar="PATH",
        help="run the server under py-spy (flame graph; a .txt path gives collapsed stacks)",
    )
    args = parser.parse_args(argv)
    try:
        args.env = parse_env_overrides(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    if not 1 <= args.streams <= 5000:
        parser.error("--streams must be between 1 and 5000")
    nofile = raise_nofile()  # before any subprocess: they inherit it
    if nofile < 2 * args.streams + 200:
        log(f"RLIMIT_NOFILE is {nofile}; {args.streams} streams may run out of file descriptors")
    result = run_or_exit(lambda: run(args))
    if args.json:
        print(json.dumps(jsonable(result), indent=2))
    else:
        print_report(result, timeline=args.timeline)
    return 0 if passed(result) else 1


if __name__ == "__main__":
    sys.exit(main())
