"""The model's HTTP client, side by side: one service per LLM_HTTP_CLIENT choice, in one run.

    python -m bench.transport                 # every choice, 3 rounds
    python -m bench.transport --rounds 2 --paced-deltas 50

Every choice gets its own uvicorn worker, all on one fake model, one database and one Redis,
with the same settings but LLM_HTTP_CLIENT. Each round runs, per server in turn (rotating who
goes first, so a slow minute hits all alike):
  1. JSON turns at c=8 for `--json-seconds`: server CPU per JSON turn;
  2. `--streams` streamed turns of 1 delta at once: server CPU per streamed turn;
  3. `--streams` streamed turns of `--paced-deltas` deltas, `--pace` seconds apart, as a real
     model sends them (each delta arrives on its own read): server CPU per paced delta is the
     phase's CPU less phase 2's per turn, over the deltas past the first.
Server CPU is each server process's own, from /proc/<pid>/stat. Figures are printed as a ratio
to the reference client's (the first choice, the default) from the same run, the absolute
figure beside it.

Issue #23's rule chose the client: our own HTTP/1.1 transport (asyncio protocols and httptools)
would have stayed only if it saved at least 25% of the service's CPU per JSON turn against the
SDK's aiohttp client. It saved 11-15% (README, "Model HTTP client"), so it went; while a `lean`
choice existed this printed the verdict (`verdict`, kept for a candidate named so again).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, get_args

import anthropic
import httpx2

from app.core.config import ModelHttpClientName
from bench._harness import (
    REDIS_URL,
    Base,
    Check,
    bench_base,
    check,
    cpu_seconds,
    log,
    print_checks,
    print_table,
    script_main,
    stop_and_scan,
    wait_for_quiet,
)
from bench.overhead import CallFailed, Conversation, concurrent
from bench.streams import error_kinds, one_stream

CLIENTS: tuple[str, ...] = get_args(ModelHttpClientName)
KEEP_OURS_SAVING = 0.25  # issue #23: ours stays only if it saves this much CPU per JSON turn
SERVER_ENV = {
    "DB_POOL_SIZE": "10",
    "DB_MAX_OVERFLOW": "0",
    "LOG_LEVEL": "INFO",
    "LLM_MAX_RETRIES": "0",
    "REDIS_URL": REDIS_URL,
}


@dataclass
class Totals:
    """One server's sums over every round."""

    json_turns: int = 0
    json_cpu: float = 0.0
    json_errors: dict[str, int] = field(default_factory=dict)
    turns: int = 0  # streamed turns of one delta
    turn_cpu: float = 0.0
    paced_streams: int = 0
    paced_deltas: int = 0  # deltas past each stream's first
    paced_cpu: float = 0.0  # less the paced streams' own turn cost (phase 2's per turn, same round)
    stream_errors: dict[str, int] = field(default_factory=dict)

    def add_errors(self, into: dict[str, int], found: dict[str, int]) -> None:
        for kind, count in found.items():
            into[kind] = into.get(kind, 0) + count

    def figures(self) -> dict[str, float]:
        return {
            "json_turn_ms": self.json_cpu / self.json_turns * 1000 if self.json_turns else math.nan,
            "streamed_turn_ms": self.turn_cpu / self.turns * 1000 if self.turns else math.nan,
            "paced_delta_us": self.paced_cpu / self.paced_deltas * 1e6 if self.paced_deltas else math.nan,
        }


@dataclass
class Server:
    name: str
    url: str
    pid: int
    http: httpx2.AsyncClient
    totals: Totals = field(default_factory=Totals)


def load_client(url: str, n: int) -> httpx2.AsyncClient:
    """The load generator's client, the same for every server (its CPU is not what is measured)."""
    # Idle connections go after 1 s, well before the server's 5 s keep-alive could close one under a request.
    limits = httpx2.Limits(max_connections=n, max_keepalive_connections=n, keepalive_expiry=1.0)
    return anthropic.DefaultAioHttpClient(base_url=url, limits=limits, timeout=httpx2.Timeout(60.0, connect=30.0))


async def json_slice(server: Server, auth: dict[str, str], args: argparse.Namespace) -> None:
    async def call(_: Conversation) -> None:
        response = await server.http.post("/chat", json={"message": "[[reply:ok]]"}, headers=auth)
        if response.status_code != 200 or response.json()["message"]["status"] != "complete":
            raise CallFailed(f"http {response.status_code}")

    series = await concurrent(call, args.concurrency, args.json_seconds, None, server.pid)
    server.totals.json_turns += len(series.latencies)
    server.totals.json_cpu += series.server_cpu
    server.totals.add_errors(server.totals.json_errors, series.errors)


async def stream_phase(server: Server, headers: dict[str, str], message: str, n: int) -> tuple[float, int, int]:
    """n streams of `message` at once: (server CPU seconds, deltas received, streams completed)."""
    cpu_before = cpu_seconds(server.pid)
    results = await asyncio.gather(*(one_stream(server.http, headers, message, deadline=120.0) for _ in range(n)))
    await asyncio.sleep(0.25)  # what the server still does for these turns
    server.totals.add_errors(server.totals.stream_errors, error_kinds(results))
    return cpu_seconds(server.pid) - cpu_before, sum(r.deltas for r in results), sum(r.completed for r in results)


async def streamed_slice(server: Server, headers: dict[str, str], args: argparse.Namespace) -> None:
    n, totals = args.streams, server.totals
    cpu, _, completed = await stream_phase(server, headers, "[[words:1]] bench", n)
    per_turn = cpu / max(completed, 1)
    totals.turns += completed
    totals.turn_cpu += cpu
    paced = f"[[words:{args.paced_deltas}]] [[slow:{args.pace}]] bench"
    cpu, deltas, completed = await stream_phase(server, headers, paced, n)
    totals.paced_streams += completed
    totals.paced_deltas += deltas - completed
    totals.paced_cpu += cpu - per_turn * completed


async def run(args: argparse.Namespace) -> dict[str, Any]:
    clients: list[str] = args.client or list(CLIENTS)
    servers: list[Server] = []
    result: dict[str, Any] = {"clients": clients, "reference": clients[0]}
    async with bench_base() as base:
        try:
            for name in clients:
                servers.append(await start(base, name, args))
            auth = {"Authorization": f"Bearer {base.api_key}"}
            headers = {**auth, "Accept": "text/event-stream"}
            result["background_load_cores"] = await wait_for_quiet(args.wait_quiet)
            log("warm-up: a few JSON turns and one burst of streams per server")
            for server in servers:
                for _ in range(2 * args.concurrency):
                    await server.http.post("/chat", json={"message": "[[reply:ok]]"}, headers=auth)
                await stream_phase(server, headers, "[[words:1]] bench", args.streams)
                server.totals = Totals()
            started = time.perf_counter()
            for round_no in range(args.rounds):
                shift = round_no % len(servers)
                order = servers[shift:] + servers[:shift]
                log(f"round {round_no + 1}/{args.rounds}: {', '.join(s.name for s in order)}")
                for server in order:
                    await json_slice(server, auth, args)
                for server in order:
                    await streamed_slice(server, headers, args)
            result["wall_s"] = time.perf_counter() - started
        finally:
            for server in servers:
                await server.http.aclose()
        result["logs"] = stop_and_scan(base.procs)
    result["servers"] = {
        s.name: {
            **s.totals.figures(),
            "json_turns": s.totals.json_turns,
            "streamed_turns": s.totals.turns,
            "paced_streams": s.totals.paced_streams,
            "paced_deltas": s.totals.paced_deltas,
            "errors": {**s.totals.json_errors, **s.totals.stream_errors},
        }
        for s in servers
    }
    return result


async def start(base: Base, name: str, args: argparse.Namespace) -> Server:
    app_name = f"{base.name}-{name}"
    env = base.server_env(app_name, f"{app_name}:", {**SERVER_ENV, "LLM_HTTP_CLIENT": name})
    proc, url = await base.start_server(name, env)
    log(f"{name}: service at {url} (pid {proc.pid})")
    return Server(name, url, proc.pid, load_client(url, max(args.streams, args.concurrency)))


FIGURES = (
    ("json_turn_ms", "CPU per JSON turn (c={c})", "ms", 2),
    ("streamed_turn_ms", "CPU per streamed turn", "ms", 2),
    ("paced_delta_us", "CPU per paced delta", "µs", 1),
)


def verdict(r: dict[str, Any]) -> tuple[float, str] | None:
    """(the CPU per JSON turn lean saves against aiohttp, the decision), while both are choices."""
    servers = r["servers"]
    if "lean" not in servers or "aiohttp" not in servers:
        return None
    saving = 1 - servers["lean"]["json_turn_ms"] / servers["aiohttp"]["json_turn_ms"]
    keep = saving >= KEEP_OURS_SAVING
    decision = "keep the lean transport" if keep else "use the SDK's aiohttp client (DefaultAioHttpClient)"
    return saving, decision


def checks(r: dict[str, Any], args: argparse.Namespace) -> list[Check]:
    """No errors; the reference (the default) costs no more CPU per JSON turn than any other choice."""
    servers, ref = r["servers"], r["reference"]
    errors = sum(sum(s["errors"].values()) for s in servers.values())
    out = [Check("errors (every server, every phase)", str(errors), "0", errors == 0)]
    for name, figures in servers.items():
        if name != ref:
            ratio = servers[ref]["json_turn_ms"] / figures["json_turn_ms"]
            out.append(check(f"{ref} ÷ {name}: CPU per JSON turn", ratio, 1.0, at_most=True, unit="×", digits=2))
    found = verdict(r)
    if found is not None:
        saving, decision = found
        out.append(Check("lean's CPU saving per JSON turn vs aiohttp", f"{saving:.0%}", "≥ 25% keeps lean", None))
        out.append(Check("verdict", decision, "issue #23 §3", None))
    return out


def print_report(r: dict[str, Any], args: argparse.Namespace) -> None:
    ref = r["reference"]
    servers = r["servers"]
    rows: list[tuple[str, str]] = [
        ("servers", f"one per LLM_HTTP_CLIENT ({', '.join(r['clients'])}); one fake, one database, one Redis"),
        ("measured", _measured(args)),
        ("background load before run", f"{r['background_load_cores']:.2f} cores (other processes)"),
        ("wall time of the rounds", f"{r['wall_s']:.0f} s"),
    ]
    for key, label, unit, digits in FIGURES:
        label = label.format(c=args.concurrency)
        for name, figures in servers.items():
            ratio = figures[key] / servers[ref][key]
            rows.append((f"{label}: {name}", f"{ratio:.2f}× {ref}  ({figures[key]:.{digits}f} {unit})"))
    for name, s in servers.items():
        count = f"{s['json_turns']} JSON turns, {s['streamed_turns']} streamed turns, {s['paced_deltas']} paced deltas"
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "no errors"
        rows.append((f"{name}: measured over", f"{count}; {errors}"))
    for name, info in r["logs"].items():
        rows.append((f"{name}: server log", f"{info['errors']} errors, {info['tracebacks']} tracebacks"))
    found = verdict(r)
    if found is not None:
        saving, decision = found
        rows.append(("lean saves per JSON turn vs aiohttp", f"{saving:.0%} (ours stays only at ≥ 25%)"))
        rows.append(("verdict", decision))
    print_table(f"bench.transport: the model's HTTP client, ratios to {ref} (same run), absolute beside", rows)
    print_checks("summary", checks(r, args))


def _measured(args: argparse.Namespace) -> str:
    return (
        f"{args.rounds} rounds, servers rotating; per server and round: JSON turns at c={args.concurrency} for "
        f"{args.json_seconds:g} s, {args.streams} streams of 1 delta, {args.streams} streams of "
        f"{args.paced_deltas} deltas {args.pace * 1000:g} ms apart"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.transport", description="The model's HTTP client, measured.")
    parser.add_argument("--client", action="append", choices=CLIENTS, help="only these (repeatable); first: reference")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over every server (3)")
    parser.add_argument("--concurrency", type=int, default=8, help="JSON turns' client tasks (8)")
    parser.add_argument("--json-seconds", type=float, default=4.0, help="JSON turns per server and round (4 s)")
    parser.add_argument("--streams", type=int, default=100, help="streams at once in the streamed phases (100)")
    parser.add_argument("--paced-deltas", type=int, default=100, help="deltas per paced stream (100)")
    parser.add_argument("--pace", type=float, default=0.05, help="seconds between a paced stream's deltas (0.05)")
    parser.add_argument("--wait-quiet", type=float, default=60.0, help="wait up to this long for other load to stop")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if not (1 <= args.rounds <= 20 and 1 <= args.concurrency <= 256 and 1 <= args.streams <= 1000):
        parser.error("--rounds/--concurrency/--streams out of range")
    if not (2 <= args.paced_deltas <= 1000 and 0 < args.pace <= 1 and 0 < args.json_seconds <= 120):
        parser.error("--paced-deltas/--pace/--json-seconds out of range")
    return args


def main(argv: list[str] | None = None) -> int:
    return script_main(parse_args(argv), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
