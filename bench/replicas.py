"""Throughput and latency through nginx: one replica behind it, then two.

    python -m bench.replicas
    python -m bench.replicas --concurrency 8,32,64 --seconds 20

Starts the fake LLM, a fresh database, two uvicorn replicas (a pool of 5 each, no overflow, one
shared Redis and key prefix) and nginx from deploy/nginx/nginx.conf.template (rendered into a temp
prefix by testkit/nginx.py, run unprivileged). Phase A: nginx with replica 1 only. Phase B: a new
nginx with both. Each phase: JSON turns (`[[reply:ok]]`, a new conversation each) for --seconds at
each --concurrency, then streamed turns (`[[words:20]] [[slow:0.05]]`) at --stream-concurrency.
Which replica served each request comes from nginx's access log (`upstream_addr`), cross-checked
with the replicas' own /metrics. Exit code 0 iff no request failed.

On a 2-core machine the replicas, nginx, the fake, Postgres and this load generator all share the
same two cores: a second replica adds a second event loop, not CPU, so throughput cannot double.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._harness import (
    HOST,
    REDIS_URL,
    Base,
    Proc,
    bench_base,
    children_pids,
    cpu_seconds,
    fmt_ms,
    log,
    machine_cpu,
    percentile,
    raise_nofile,
    run_or_exit,
    wait_for_quiet,
)
from testkit.net import free_port
from testkit.nginx import Prefix, start_nginx

POOL = 5
JSON_MESSAGE = "[[reply:ok]]"
STREAM_MESSAGE = "[[words:20]] [[slow:0.05]]"
MAX_REQUESTS_PER_ROW = 200_000  # a hard cap on a timed row, whatever the speed
CLIENT_TIMEOUT = 60.0
SHARED_CPU_NOTE = (
    "note: this machine has {cores} cores, shared by both replicas, nginx, the fake LLM, Postgres, Redis and\n"
    "this load generator; a second replica adds an event loop, not CPU, so it cannot double throughput here."
)
METRIC_RE = re.compile(r"^agentchat_http_request_duration_seconds_count\{([^}]*)\}\s+([0-9.eE+]+)$", re.MULTILINE)


@dataclass
class Row:
    kind: str  # "json" or "sse"
    concurrency: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # JSON: whole turn; SSE: whole stream (200s only)
    ttfts: list[float] = field(default_factory=list)  # SSE: send → first delta
    completed: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    served: dict[str, int] = field(default_factory=dict)  # replica → /chat requests (nginx access log)
    cpu: dict[str, float] = field(default_factory=dict)  # cores used during the row, by process

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else math.nan

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


@dataclass
class Phase:
    name: str
    replicas: int
    rows: list[Row] = field(default_factory=list)
    metrics_served: dict[str, int] = field(default_factory=dict)  # replica → /chat count delta (/metrics)
    nginx_errors: list[str] = field(default_factory=list)  # error.log lines at [error] or worse


def _error_type(body: bytes | str) -> str:
    try:
        return str(json.loads(body)["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "?"


async def json_turn(http: httpx.AsyncClient, headers: dict[str, str], row: Row) -> None:
    sent = time.perf_counter()
    try:
        r = await http.post("/chat", json={"message": JSON_MESSAGE}, headers=headers)
    except httpx.HTTPError as exc:
        row.errors[f"transport {type(exc).__name__}"] += 1
        return
    if r.status_code == 200:
        row.latencies.append(time.perf_counter() - sent)
        row.completed += 1
    else:
        row.errors[f"{r.status_code} {_error_type(r.content)}"] += 1


async def stream_turn(http: httpx.AsyncClient, headers: dict[str, str], row: Row) -> None:
    sent = time.perf_counter()
    body = {"message": STREAM_MESSAGE, "stream": True}
    ttft: float | None = None
    try:
        async with http.stream("POST", "/chat", json=body, headers=headers) as r:
            if r.status_code != 200:
                row.errors[f"{r.status_code} {_error_type(await r.aread())}"] += 1
                return
            event = ""
            async for line in r.aiter_lines():
                if not line:
                    event = ""
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    if event == "delta" and ttft is None:
                        ttft = time.perf_counter() - sent
                    elif event == "error":
                        row.errors[f"error event {_error_type(line[5:])}"] += 1
                        return
                    elif event == "end":
                        row.completed += 1
                        row.latencies.append(time.perf_counter() - sent)
                        if ttft is not None:
                            row.ttfts.append(ttft)
                        return
        row.errors["stream closed without end"] += 1
    except httpx.HTTPError as exc:
        row.errors[f"transport {type(exc).__name__}"] += 1


TurnFn = Callable[[httpx.AsyncClient, dict[str, str], Row], Coroutine[Any, Any, None]]


async def drive(url: str, headers: dict[str, str], row: Row, turn: TurnFn, seconds: float) -> None:
    """`row.concurrency` clients, each sending turns back to back until `seconds` have passed."""
    limits = httpx.Limits(max_connections=row.concurrency, max_keepalive_connections=row.concurrency)
    timeout = httpx.Timeout(CLIENT_TIMEOUT, connect=10.0)
    count = [0]
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as http:
        start = time.perf_counter()
        until = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < until and count[0] < MAX_REQUESTS_PER_ROW:
                count[0] += 1
                await turn(http, headers, row)

        await asyncio.wait_for(
            asyncio.gather(*(client() for _ in range(row.concurrency))), timeout=seconds + CLIENT_TIMEOUT + 10
        )
        row.seconds = time.perf_counter() - start


class Nginx:
    """One nginx (master + workers) in a prefix of its own, in front of the given replica ports."""

    def __init__(self, root: Path, upstream_ports: list[int]) -> None:
        self.prefix = Prefix(root)
        self.port = free_port()
        self.popen = start_nginx(self.prefix, self.port, upstream_ports)
        self.url = f"http://{HOST}:{self.port}"
        self.log_offset = 0

    async def ready(self, within: float = 15.0) -> None:
        async with httpx.AsyncClient(timeout=2.0) as http:
            for _ in range(int(within / 0.1)):
                if self.popen.poll() is not None:
                    raise RuntimeError(f"nginx exited with {self.popen.returncode}: {self.error_log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{self.url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"nginx not ready at {self.url}: {self.error_log_tail()}")

    def pids(self) -> list[int]:
        return [self.popen.pid, *children_pids(self.popen.pid)]

    def error_log_tail(self, chars: int = 2000) -> str:
        try:
            return self.prefix.error_log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def mark(self) -> None:
        """Later access-log reads start here."""
        try:
            self.log_offset = self.prefix.access_log.stat().st_size
        except OSError:
            self.log_offset = 0

    def served_since_mark(self, names: dict[str, str]) -> dict[str, int]:
        """/chat requests per upstream (by replica name) logged since mark()."""
        served: Counter[str] = Counter()
        try:
            with open(self.prefix.access_log, "rb") as access:
                access.seek(self.log_offset)
                for raw in access:
                    try:
                        entry = json.loads(raw)
                    except ValueError:
                        continue
                    if entry.get("uri") == "/chat":
                        # "a, b" when nginx tried two upstreams; the last one answered.
                        addr = str(entry.get("upstream_addr", "")).split(",")[-1].strip()
                        served[names.get(addr, addr or "none")] += 1
        except OSError:
            pass
        return dict(served)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()  # SIGTERM: fast shutdown, the workers go with the master
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log("nginx did not stop within 10 s; killing it")
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, 9)
                self.popen.wait(timeout=5)


async def chat_counts(urls: dict[str, str]) -> dict[str, int]:
    """Per replica: requests to /chat so far, from its own /metrics (all statuses)."""
    counts: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=5.0) as http:
        for name, url in urls.items():
            text = (await http.get(f"{url}/metrics")).text
            counts[name] = int(
                sum(float(value) for labels, value in METRIC_RE.findall(text) if 'route="/chat"' in labels)
            )
    return counts


def cpu_snapshot(procs: dict[str, list[int]]) -> tuple[float, dict[str, float]]:
    snap = {name: sum(cpu_seconds(p) for p in pids) for name, pids in procs.items()}
    snap["loadgen"] = time.process_time()
    return time.monotonic(), snap


def cpu_used(before: tuple[float, dict[str, float]], after: tuple[float, dict[str, float]]) -> dict[str, float]:
    span = after[0] - before[0]
    return {k: (after[1][k] - before[1][k]) / span for k in before[1]} if span > 0 else {}


async def run_phase(
    args: argparse.Namespace,
    base: Base,
    phase: Phase,
    nginx: Nginx,
    replicas: dict[str, tuple[Proc, str]],
    names: dict[str, str],
) -> None:
    await nginx.ready()
    headers = {"Authorization": f"Bearer {base.api_key}"}
    procs = {name: [proc.pid] for name, (proc, _) in replicas.items()}
    procs["nginx"] = nginx.pids()
    procs["fake"] = [base.fake.pid]
    log(f"{phase.name}: warming up for {args.warmup:g} s")
    await drive(nginx.url, headers, Row("json", 8), json_turn, args.warmup)
    before_metrics = await chat_counts({name: url for name, (_, url) in replicas.items()})
    plan: list[tuple[str, int, TurnFn, float]] = [("json", c, json_turn, args.seconds) for c in args.concurrency]
    plan.append(("sse", args.stream_concurrency, stream_turn, args.stream_seconds))
    for kind, concurrency, turn, seconds in plan:
        row = Row(kind, concurrency)
        log(f"{phase.name}: {kind} turns at concurrency {concurrency} for {seconds:g} s")
        nginx.mark()
        cpu0, busy0 = cpu_snapshot(procs), machine_cpu()
        await drive(nginx.url, headers, row, turn, seconds)
        cpu1, busy1 = cpu_snapshot(procs), machine_cpu()
        row.cpu = cpu_used(cpu0, cpu1)
        row.cpu["machine"] = (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1) * (os.cpu_count() or 1)
        await asyncio.sleep(0.2)  # nginx logs a request when it is done; streams end with the row
        row.served = nginx.served_since_mark(names)
        phase.rows.append(row)
        print_row(phase, row)
    after_metrics = await chat_counts({name: url for name, (_, url) in replicas.items()})
    phase.metrics_served = {k: after_metrics[k] - before_metrics.get(k, 0) for k in after_metrics}
    with contextlib.suppress(OSError):
        phase.nginx_errors = [
            line
            for line in nginx.prefix.error_log.read_text(errors="replace").splitlines()
            if re.search(r"\[(error|crit|alert|emerg)\]", line)
        ]


def row_label(row: Row) -> str:
    return f"{'JSON' if row.kind == 'json' else 'SSE '} c={row.concurrency}"


def print_row(phase: Phase, row: Row) -> None:
    errs = ", ".join(f"{k}: {v}" for k, v in sorted(row.errors.items())) or "none"
    served = ", ".join(f"{k} {v}" for k, v in sorted(row.served.items())) or "n/a"
    cpu = " ".join(f"{k} {v:.2f}" for k, v in row.cpu.items())
    if row.kind == "json":
        timing = (
            f"{row.rate:7.1f} turns/s  p50 {fmt_ms(percentile(row.latencies, 50))}  "
            f"p90 {fmt_ms(percentile(row.latencies, 90))}  p99 {fmt_ms(percentile(row.latencies, 99))}"
        )
    else:
        timing = (
            f"{row.completed} completed ({row.rate:.1f}/s)  TTFT p50 {fmt_ms(percentile(row.ttfts, 50))}  "
            f"p99 {fmt_ms(percentile(row.ttfts, 99))}  stream p50 {fmt_ms(percentile(row.latencies, 50))}"
        )
    print(f"[{phase.name}] {row_label(row):<11} {timing}", flush=True)
    print(f"    errors {row.error_count} ({errs}); served by {served}", flush=True)
    print(f"    CPU (cores, of {os.cpu_count()}): {cpu}", flush=True)


def comparison(phases: list[Phase]) -> None:
    a, b = phases
    print("\ncomparison — 1 replica vs 2 replicas behind nginx")
    print("-" * 86)
    print(f"{'row':<12}{'metric':<16}{'1 replica':>16}{'2 replicas':>16}{'2 / 1':>10}")

    def line(label: str, metric: str, x: float, y: float, fmt: Callable[[float], str], ratio: bool = True) -> None:
        r = f"{y / x:.2f}x" if ratio and x and not math.isnan(x) and not math.isnan(y) else ""
        print(f"{label:<12}{metric:<16}{fmt(x):>16}{fmt(y):>16}{r:>10}")

    def ms(v: float) -> str:
        return fmt_ms(v)

    for ra, rb in zip(a.rows, b.rows, strict=True):
        label = row_label(ra)
        if ra.kind == "json":
            line(label, "turns/s", ra.rate, rb.rate, lambda v: f"{v:.1f}")
            for pct in (50, 90, 99):
                line("", f"p{pct}", percentile(ra.latencies, pct), percentile(rb.latencies, pct), ms)
        else:
            line(label, "completed", ra.completed, rb.completed, lambda v: f"{v:.0f}")
            line("", "TTFT p50", percentile(ra.ttfts, 50), percentile(rb.ttfts, 50), ms)
            line("", "TTFT p99", percentile(ra.ttfts, 99), percentile(rb.ttfts, 99), ms)
        line("", "errors", ra.error_count, rb.error_count, lambda v: f"{v:.0f}", ratio=False)
        split = " / ".join(str(rb.served.get(n, 0)) for n in ("replica1", "replica2"))
        print(f"{'':<12}{'r1 / r2 served':<16}{'all on r1':>16}{split:>16}")
        cpu_a, cpu_b = ra.cpu.get("machine", math.nan), rb.cpu.get("machine", math.nan)
        line("", "machine cores", cpu_a, cpu_b, lambda v: f"{v:.2f}", ratio=False)
    logged = Counter[str]()
    for row in b.rows:
        logged.update(row.served)
    print(
        f"\nphase B /chat requests after the warm-up: replicas' own /metrics {dict(sorted(b.metrics_served.items()))}, "
        f"nginx access log {dict(sorted(logged.items()))}"
    )
    print(SHARED_CPU_NOTE.format(cores=os.cpu_count()))


async def run(args: argparse.Namespace) -> list[Phase]:
    phases: list[Phase] = []
    await wait_for_quiet(args.wait_quiet)
    async with bench_base() as base:
        replicas: dict[str, tuple[Proc, str]] = {}
        for i in (1, 2):
            env = base.server_env(
                f"{base.name}-r{i}",
                f"{base.name}:",  # shared: locks, runs and limits work across replicas
                {
                    "REDIS_URL": REDIS_URL,
                    "DB_POOL_SIZE": str(POOL),
                    "DB_MAX_OVERFLOW": "0",
                    "LOG_LEVEL": "WARNING",
                },
            )
            replicas[f"replica{i}"] = await base.start_server(f"replica{i}", env)
        ports = {name: int(url.rsplit(":", 1)[1]) for name, (_, url) in replicas.items()}
        names = {f"{HOST}:{port}": name for name, port in ports.items()}
        log(f"replicas at {', '.join(url for _, url in replicas.values())}; fake at {base.fake_url}")
        print(
            f"bench.replicas — JSON turns {JSON_MESSAGE!r} (new conversation each) at concurrency "
            f"{', '.join(map(str, args.concurrency))} for {args.seconds:g} s; SSE turns {STREAM_MESSAGE!r} at "
            f"concurrency {args.stream_concurrency} for {args.stream_seconds:g} s; pool {POOL} per replica",
            flush=True,
        )
        for label, upstreams in (("A: 1 replica", ["replica1"]), ("B: 2 replicas", ["replica1", "replica2"])):
            phase = Phase(label, len(upstreams))
            nginx = Nginx(base.workdir / f"nginx-{len(upstreams)}", [ports[n] for n in upstreams])
            try:
                await run_phase(args, base, phase, nginx, replicas, names)
            finally:
                nginx.stop()
            phases.append(phase)
        for phase in phases:
            if phase.nginx_errors:
                print(f"\n[{phase.name}] nginx error.log: {len(phase.nginx_errors)} lines at [error] or worse")
                for line in phase.nginx_errors[:5]:
                    print(f"    {line[:240]}")
    return phases


def concurrency_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(not 1 <= v <= 1000 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of integers between 1 and 1000")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=concurrency_list, default=[8, 32], help="JSON rows (default 8,32)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per JSON row (default 10)")
    parser.add_argument("--stream-concurrency", type=int, default=50, help="concurrent streams (default 50)")
    parser.add_argument("--stream-seconds", type=float, default=10.0, help="seconds of streaming (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="unrecorded JSON turns per phase (default 2 s)")
    parser.add_argument(
        "--wait-quiet", type=float, default=30.0, help="wait up to this many seconds for other CPU load to stop"
    )
    args = parser.parse_args(argv)
    for name in ("seconds", "stream_seconds", "warmup"):
        if not 0 <= getattr(args, name) <= 600:
            parser.error(f"--{name.replace('_', '-')} must be between 0 and 600")
    if not 1 <= args.stream_concurrency <= 2000:
        parser.error("--stream-concurrency must be between 1 and 2000")
    raise_nofile()
    phases = run_or_exit(lambda: run(args))
    comparison(phases)
    failed = sum(row.error_count for phase in phases for row in phase.rows)
    print(f"\nresult: {'PASS' if failed == 0 else f'FAIL ({failed} failed requests)'}")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
