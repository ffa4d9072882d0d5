"""Streams at real speed: server CPU per paced delta and per streamed turn, the service beside the
naive handler and a bare relay, one worker each, in one run (issue #28).

    python -m bench.paced                        # 2 rounds: service, naive, relay
    python -m bench.paced --rounds 3 --streams 100 --paced-deltas 100 --pace 0.05
    python -m bench.paced --against ../ab28      # also the service as checked out there (A/B)

A real model sends an event every 10-50 ms per answer, so each delta arrives on its own read and
leaves on its own write: what `--scenario deltas` (no pauses) cannot show. Every server gets its own
uvicorn worker on one fake model and one database; the service runs with Redis, auth, persistence
and INFO logging (pool 5, as the streams scenarios). Each round runs, per server in turn (rotating
who goes first, so a slow minute hits all alike):
  1. `--turn-bursts` times, `--streams` streamed turns of 1 delta at once: CPU per streamed turn;
  2. `--streams` streamed turns of `--paced-deltas` deltas `--pace` seconds apart: CPU per paced
     delta is that phase's CPU less phase 1's per turn, over the deltas past each stream's first.
Server CPU is each process's own, from /proc/<pid>/stat. Figures are ratios to the naive handler's
(bench/naive_app.py) and to the relay floor's (bench/relay_app.py) from the same run, absolute beside.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from bench._harness import (
    HOST,
    REDIS_URL,
    Base,
    Check,
    bench_base,
    clean_env,
    cpu_seconds,
    log,
    percentile,
    print_checks,
    print_table,
    rss_kib,
    script_main,
    spawn,
    stop_and_scan,
    uvicorn_cmd,
    wait_for_quiet,
    wait_http_ok,
)
from bench.streams import ISSUE_ENV, StreamResult, error_kinds, one_stream, stream_client
from testkit.net import free_port

# Issue #28's targets, as fractions of the other servers' figures from the same run.
TARGET_DELTA_VS_NAIVE = 0.2
TARGET_DELTA_VS_RELAY = 2.0
TARGET_TURN_VS_NAIVE = 0.4
SERVICE_ENV = {**ISSUE_ENV, "REDIS_URL": REDIS_URL}


@dataclass
class Totals:
    turns: int = 0  # streamed turns of one delta
    turn_cpu: float = 0.0
    paced_deltas: int = 0  # deltas past each paced stream's first
    paced_cpu: float = 0.0  # less the paced streams' own turn cost (phase 1's per turn, same round)
    gaps: list[float] = field(default_factory=list)  # between consecutive deltas, at the client
    round_turn_ms: list[float] = field(default_factory=list)  # CPU per streamed turn, each round's
    errors: dict[str, int] = field(default_factory=dict)

    def add_errors(self, found: dict[str, int]) -> None:
        for kind, count in found.items():
            self.errors[kind] = self.errors.get(kind, 0) + count

    def figures(self) -> dict[str, float]:
        return {
            "streamed_turn_ms": self.turn_cpu / self.turns * 1000 if self.turns else math.nan,
            "paced_delta_us": self.paced_cpu / self.paced_deltas * 1e6 if self.paced_deltas else math.nan,
            "gap_p99_ms": percentile(self.gaps, 99) * 1000,
        }


@dataclass
class Server:
    name: str
    url: str
    pid: int
    http: httpx2.AsyncClient
    totals: Totals = field(default_factory=Totals)


async def phase(server: Server, headers: dict[str, str], message: str, n: int) -> tuple[float, list[StreamResult]]:
    """n streams of `message` at once: (server CPU seconds, their results)."""
    cpu_before = cpu_seconds(server.pid)
    results = await asyncio.gather(*(one_stream(server.http, headers, message, deadline=120.0) for _ in range(n)))
    await asyncio.sleep(0.25)  # what the server still does for these turns
    server.totals.add_errors(error_kinds(results))
    return cpu_seconds(server.pid) - cpu_before, results


async def one_round(server: Server, headers: dict[str, str], args: argparse.Namespace) -> None:
    n, totals = args.streams, server.totals
    # Several bursts: a server's CPU per turn moves by a tenth between bursts of 100, more than the
    # difference a ≤ 0.4× target has to resolve.
    cpu = 0.0
    completed = 0
    for _ in range(args.turn_bursts):
        burst_cpu, results = await phase(server, headers, "[[words:1]] bench", n)
        cpu += burst_cpu
        completed += sum(r.completed for r in results)
    per_turn = cpu / max(completed, 1)
    totals.turns += completed
    totals.turn_cpu += cpu
    totals.round_turn_ms.append(per_turn * 1000)
    paced = f"[[words:{args.paced_deltas}]] [[slow:{args.pace}]] bench"
    cpu, results = await phase(server, headers, paced, n)
    completed = sum(r.completed for r in results)
    # Deltas the model sent past each stream's first (a frame that merges deltas ready together
    # still relays each of them).
    totals.paced_deltas += (args.paced_deltas - 1) * completed
    totals.paced_cpu += cpu - per_turn * completed
    for r in results:
        totals.gaps += r.gaps


async def start_baseline(base: Base, name: str, target: str, env: dict[str, str]) -> tuple[int, str]:
    port = free_port()
    proc = spawn(name, uvicorn_cmd(target, port), clean_env(env), base.workdir / f"{name}.log")
    base.procs.append(proc)
    url = f"http://{HOST}:{port}"
    await wait_http_ok(f"{url}/healthz", proc, within=60)
    return proc.pid, url


async def start_all(base: Base, args: argparse.Namespace) -> list[Server]:
    out: list[Server] = []
    bare = {"DATABASE_URL": base.db_url, "ANTHROPIC_API_KEY": "bench", "ANTHROPIC_BASE_URL": base.fake_url}
    targets: list[tuple[str, str, dict[str, str]]] = [
        ("service", "app.main:app", base.server_env(f"{base.name}-service", f"{base.name}-service:", SERVICE_ENV)),
        # Its sessions hold a connection each for a whole stream: the rest queue (as they would).
        ("naive", "bench.naive_app:app", {**bare, "APP_NAME": f"{base.name}-naive", "NAIVE_POOL_TIMEOUT": "300"}),
        ("relay", "bench.relay_app:app", {**bare, "APP_NAME": f"{base.name}-relay"}),
    ]
    for name, target, env in targets:
        if args.only and name not in args.only:
            continue
        if name == "service":
            proc, url = await base.start_server(name, env)
            pid = proc.pid
        else:
            pid, url = await start_baseline(base, name, target, env)
        out.append(Server(name, url, pid, stream_client(url, args.streams)))
        log(f"{name}: {target} at {url} (pid {pid})")
    if args.against is not None:
        env = base.server_env(f"{base.name}-against", f"{base.name}-against:", SERVICE_ENV)
        port = free_port()
        cmd = [*uvicorn_cmd("app.main:app", port), "--app-dir", str(args.against)]
        proc = spawn("against", cmd, env, base.workdir / "against.log")
        base.procs.append(proc)
        url = f"http://{HOST}:{port}"
        await wait_http_ok(f"{url}/readyz", proc, within=60)
        out.append(Server("against", url, proc.pid, stream_client(url, args.streams)))
        log(f"against: {args.against} at {url} (pid {proc.pid})")
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    async with bench_base() as base:
        servers: list[Server] = []
        try:
            servers = await start_all(base, args)
            headers = {"Authorization": f"Bearer {base.api_key}", "Accept": "text/event-stream"}
            result["background_load_cores"] = await wait_for_quiet(args.wait_quiet)
            log("warm-up: one burst of streams per server")
            for server in servers:
                await phase(server, headers, "[[words:1]] bench", args.streams)
                server.totals = Totals()
            started = time.perf_counter()
            for round_no in range(args.rounds):
                shift = round_no % len(servers)
                order = servers[shift:] + servers[:shift]
                log(f"round {round_no + 1}/{args.rounds}: {', '.join(s.name for s in order)}")
                for server in order:
                    await one_round(server, headers, args)
            result["wall_s"] = time.perf_counter() - started
            result["rss_mib"] = {s.name: rss_kib(s.pid)[0] / 1024 for s in servers}
        finally:
            for server in servers:
                await server.http.aclose()
        result["logs"] = stop_and_scan(base.procs)
    result["servers"] = {
        s.name: {
            **s.totals.figures(),
            "streamed_turns": s.totals.turns,
            "paced_deltas": s.totals.paced_deltas,
            "round_turn_ms": s.totals.round_turn_ms,
            "errors": s.totals.errors,
        }
        for s in servers
    }
    return result


def ratio(r: dict[str, Any], key: str, of: str, to: str) -> float:
    servers = r["servers"]
    if of not in servers or to not in servers:
        return math.nan
    return float(servers[of][key] / servers[to][key])


def _versus(r: dict[str, Any], key: str, to: str, target: float, unit: str, digits: int) -> Check:
    """service ÷ `to` against `target`, both absolute figures beside the ratio."""
    value = ratio(r, key, "service", to)
    label = "CPU per paced delta" if key == "paced_delta_us" else "CPU per streamed turn"
    metric = f"{label}, service ÷ {'relay floor' if to == 'relay' else to}"
    if math.isnan(value):
        return Check(metric, "n/a", f"≤ {target:g}×", None)
    servers = r["servers"]
    figures = f"{servers['service'][key]:.{digits}f} {unit}; {to} {servers[to][key]:.{digits}f} {unit}"
    return Check(metric, f"{value:.2f}× ({figures})", f"≤ {target:g}×", value <= target)


def checks(r: dict[str, Any], args: argparse.Namespace) -> list[Check]:
    errors = sum(sum(s["errors"].values()) for name, s in r["servers"].items() if name in ("service", "relay"))
    return [
        _versus(r, "paced_delta_us", "naive", TARGET_DELTA_VS_NAIVE, "µs", 0),
        _versus(r, "paced_delta_us", "relay", TARGET_DELTA_VS_RELAY, "µs", 0),
        _versus(r, "streamed_turn_ms", "naive", TARGET_TURN_VS_NAIVE, "ms", 2),
        Check("errors (service, relay)", str(errors), "0", errors == 0),
    ]


FIGURES = (
    ("paced_delta_us", "CPU per paced delta", "µs", 1),
    ("streamed_turn_ms", "CPU per streamed turn", "ms", 2),
)


def print_report(r: dict[str, Any], args: argparse.Namespace) -> None:
    servers = r["servers"]
    rows: list[tuple[str, str]] = [
        ("servers", ", ".join(servers) + "; one uvicorn worker each, one fake, one database"),
        ("measured", _measured(args)),
        ("background load before run", f"{r['background_load_cores']:.2f} cores (other processes)"),
        ("wall time of the rounds", f"{r['wall_s']:.0f} s"),
    ]
    for key, label, unit, digits in FIGURES:
        for name, figures in servers.items():
            vs = f"{ratio(r, key, name, 'naive'):.2f}× naive, {ratio(r, key, name, 'relay'):.2f}× relay"
            rows.append((f"{label}: {name}", f"{vs}  ({figures[key]:.{digits}f} {unit})"))
    for name, s in servers.items():
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "no errors"
        rows.append(
            (
                f"{name}: measured over",
                f"{s['streamed_turns']} streamed turns, {s['paced_deltas']} paced deltas; {errors}; "
                f"gap between deltas p99 {s['gap_p99_ms']:.0f} ms; RSS {r['rss_mib'][name]:.0f} MiB",
            )
        )
    if "naive" in servers and "service" in servers:
        # Each round's own ratio: how far one round's reading of the per-turn target can stray.
        spread = [
            s / n for s, n in zip(servers["service"]["round_turn_ms"], servers["naive"]["round_turn_ms"], strict=True)
        ]
        rows.append(("CPU per streamed turn ÷ naive, each round", ", ".join(f"{x:.2f}×" for x in spread)))
    for name, info in r["logs"].items():
        rows.append((f"{name}: server log", f"{info['errors']} errors, {info['tracebacks']} tracebacks"))
    print_table("bench.paced: streams at real speed, server CPU from /proc (same run, ratios first)", rows)
    print_checks("summary", checks(r, args))


def _measured(args: argparse.Namespace) -> str:
    return (
        f"{args.rounds} rounds, servers rotating; per server and round: {args.turn_bursts} × {args.streams} streams "
        "of 1 delta, "
        f"{args.streams} streams of {args.paced_deltas} deltas {args.pace * 1000:g} ms apart"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.paced", description="Streams at real speed, measured.")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over every server (2)")
    parser.add_argument("--streams", type=int, default=100, help="streams at once in each phase (100)")
    parser.add_argument("--turn-bursts", type=int, default=4, help="bursts of 1-delta streams per server and round (4)")
    parser.add_argument("--paced-deltas", type=int, default=100, help="deltas per paced stream (100)")
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between a paced stream's deltas (0.05)")
    parser.add_argument("--only", action="append", choices=["service", "naive", "relay"], help="just these servers")
    parser.add_argument("--against", type=Path, help="also serve the service as checked out in this directory")
    parser.add_argument("--wait-quiet", type=float, default=30.0, help="wait up to this long for other load to stop")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 20 and 1 <= args.streams <= 1000):
        parser.error("--rounds/--streams out of range")
    if not 1 <= args.turn_bursts <= 50:
        parser.error("--turn-bursts out of range")
    if not (2 <= args.paced_deltas <= 1000 and 0 < args.pace <= 1):
        parser.error("--paced-deltas/--pace out of range")
    if args.against is not None:
        args.against = args.against.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    return script_main(parse_args(argv), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
