"""What the service adds to a turn: the fake LLM called directly, a naive handler and POST /chat, side by side.

    python -m bench.overhead                 # a new conversation every turn
    python -m bench.overhead --continue      # one conversation per client task (history grows)
    python -m bench.overhead --profile       # server under py-spy -> bench/profile.svg
    python -m bench.overhead --against ../prev  # A/B: another checkout in the naive baseline's place
    python -m bench.overhead --floor         # bench/floor_app.py (the stack alone) in the naive baseline's place

The fake answers at once (`[[reply:ok]]`), so a /chat turn's latency is the service's own work
(auth, two short transactions, the upstream call and its SSE parsing, logging at INFO) plus one
fake call. The naive handler (bench/naive_app.py: the tutorial pattern, on the same database, fake
and key, one worker with the same uvicorn flags) is the baseline the service should beat.
Concurrency 1: each target in blocks of back-to-back requests, rotating, so all see the same
conditions; a block's first request (after the others' blocks) is reported apart, as after idle
(see `sequential`). Concurrency 8: each target alone, in slices interleaved with the others'.
Server CPU is each server process's own, from /proc; the service's /metrics is scraped around its
phases. The load generator shares the
two cores with the servers, so it is a cheap client, the same for every target: the one the
service uses for its model (the SDK's DefaultAioHttpClient: httpx2 on aiohttp). Always exits 0;
PASS/MISS against targets.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anthropic
import httpx2

from bench import _metrics
from bench._harness import (
    REDIS_URL,
    Check,
    Stack,
    add_common_options,
    bench_stack,
    check,
    cpu_seconds,
    fmt_ms,
    log,
    parse_env_overrides,
    percentile,
    print_checks,
    print_table,
    resolve_profile,
    script_main,
    wait_for_quiet,
)

MESSAGE = "[[reply:ok]]"
# A minimal valid Messages API body; the fake insists on anthropic-version as the real API does.
FAKE_BODY: dict[str, Any] = {
    "model": "claude-sonnet-5-5",
    "max_tokens": 16,
    "messages": [{"role": "user", "content": MESSAGE}],
}
FAKE_HEADERS = {"Authorization": "Bearer bench", "anthropic-version": "2023-06-01"}
MAX_C8_REQUESTS = 100_000  # a hard cap on a timed phase, whatever the speed
T = TypeVar("T")
FAKE, FAKE_SSE, NAIVE, SERVICE = "fake direct (JSON)", "fake direct (SSE)", "naive /chat", "service /chat"


@dataclass
class Conversation:
    """Per client task: the conversation to continue (with --continue) and its length."""

    id: str | None = None
    turns: int = 0


@dataclass
class Series:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    server_cpu: float = math.nan  # CPU seconds the service used during a c=8 phase
    longest_conversation: int = 0  # turns in the longest conversation (grows only with --continue)

    def add_error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def merge(self, other: Series) -> None:
        """Add another slice of the same target's phase."""
        self.latencies += other.latencies
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count
        self.elapsed += other.elapsed
        self.server_cpu = other.server_cpu if math.isnan(self.server_cpu) else self.server_cpu + other.server_cpu
        self.longest_conversation = max(self.longest_conversation, other.longest_conversation)

    def summary(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "requests": n,
            "errors": dict(self.errors),
            "p50_s": percentile(self.latencies, 50),
            "p90_s": percentile(self.latencies, 90),
            "p99_s": percentile(self.latencies, 99),
            "mean_s": statistics.fmean(self.latencies) if n else math.nan,
            "per_s": n / self.elapsed if self.elapsed else math.nan,
            "server_cpu_ms_per_request": self.server_cpu / n * 1000 if n else math.nan,
            "longest_conversation_turns": self.longest_conversation,
        }


Call = Callable[[Conversation], Awaitable[None]]


class Targets:
    """The request functions, one persistent keep-alive client per target."""

    def __init__(self, stack: Stack, *, continue_conversations: bool) -> None:
        def client(url: str) -> httpx2.AsyncClient:
            # Idle connections go after 1 s, before a server's 5 s keep-alive could close one under a request.
            limits = httpx2.Limits(max_connections=16, max_keepalive_connections=16, keepalive_expiry=1.0)
            return anthropic.DefaultAioHttpClient(base_url=url, limits=limits, timeout=httpx2.Timeout(30.0))

        self.fake_json, self.fake_stream = client(stack.fake_url), client(stack.fake_url)
        self.service, self.naive = client(stack.server_url), client(stack.naive_url)
        self.auth = {"Authorization": f"Bearer {stack.api_key}"}
        self.continue_conversations = continue_conversations
        # Every /chat request per server, warm-up included, to divide server-side totals by.
        self.calls = {SERVICE: 0, NAIVE: 0}

    async def aclose(self) -> None:
        for client in (self.fake_json, self.fake_stream, self.service, self.naive):
            await client.aclose()

    async def call_fake_json(self, _: Conversation) -> None:
        response = await self.fake_json.post("/v1/messages", json=FAKE_BODY, headers=FAKE_HEADERS)
        if response.status_code != 200:
            raise CallFailed(f"http {response.status_code}")

    async def call_fake_stream(self, _: Conversation) -> None:
        # What the service itself asks the fake for: the same answer as SSE, read to the end.
        response = await self.fake_stream.post("/v1/messages", json={**FAKE_BODY, "stream": True}, headers=FAKE_HEADERS)
        if response.status_code != 200:
            raise CallFailed(f"http {response.status_code}")

    async def call_service(self, conversation: Conversation) -> None:
        await self._chat(SERVICE, self.service, conversation, continue_=self.continue_conversations)

    async def call_naive(self, conversation: Conversation) -> None:
        await self._chat(NAIVE, self.naive, conversation, continue_=False)  # the naive app only starts new ones

    async def _chat(
        self, name: str, client: httpx2.AsyncClient, conversation: Conversation, *, continue_: bool
    ) -> None:
        payload: dict[str, Any] = {"message": MESSAGE}
        if continue_ and conversation.id is not None:
            payload["conversation_id"] = conversation.id
        self.calls[name] += 1
        response = await client.post("/chat", json=payload, headers=self.auth)
        if response.status_code != 200:
            raise CallFailed(f"http {response.status_code} {_error_type(response)}")
        data = response.json()
        if data["message"]["status"] != "complete":
            raise CallFailed(f"message {data['message']['status']}")
        conversation.id = data["conversation_id"]
        conversation.turns += 1


class CallFailed(Exception):
    pass


def _error_type(response: httpx2.Response) -> str:
    try:
        return str(response.json()["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "?"


async def timed(call: Call, conversation: Conversation, series: Series | None) -> None:
    started = time.perf_counter()
    try:
        await call(conversation)
    except (CallFailed, httpx2.HTTPError, ValueError, KeyError) as exc:
        if series is not None:
            series.add_error(str(exc) if isinstance(exc, CallFailed) else type(exc).__name__)
        return
    if series is not None:
        series.latencies.append(time.perf_counter() - started)


async def sequential(
    calls: dict[str, Call], warmup: int, requests: int, block: int
) -> tuple[dict[str, Series], dict[str, Series]]:
    """c=1: each target in turn for a block of `block` back-to-back requests, rotating who goes
    first, so drift hits all alike: (the measured requests, the first request of each block).

    A block's first request comes after the other targets' blocks, an idle gap of tens of
    milliseconds, and on this VM a process woken after such a gap runs its next request markedly
    slower (more CPU, not only more wait). Round-robin per request (block=1) gives every request
    such a gap, sized by the other targets' speed (the faster target waits out the slower ones),
    so each block's first request is kept apart, reported as "after idle", not in the median."""
    names = list(calls)
    conversations = {name: Conversation() for name in names}
    series = {name: Series() for name in names}
    first = {name: Series() for name in names}
    for round_no in range(warmup):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            await timed(calls[name], conversations[name], None)
    round_no = 0
    while any(len(series[name].latencies) + sum(series[name].errors.values()) < requests for name in names):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            for i in range(block):
                into = first[name] if i == 0 and block > 1 else series[name]
                await timed(calls[name], conversations[name], into)
        round_no += 1
    for name in names:
        series[name].longest_conversation = conversations[name].turns
    return series, first


async def concurrent(call: Call, workers: int, seconds: float, count: int | None, server_pid: int) -> Series:
    """c=workers: every task loops until the time is up (or the shared count is reached)."""
    series = Series()
    conversations = [Conversation() for _ in range(workers)]
    for conversation in conversations:  # warm the pool's connections (untimed)
        await timed(call, conversation, None)
    cap = min(count, MAX_C8_REQUESTS) if count else MAX_C8_REQUESTS
    deadline_s = seconds if count is None else max(seconds, 120.0)
    issued = 0

    async def worker(conversation: Conversation) -> None:
        nonlocal issued
        for _ in range(cap):
            if issued >= cap or time.perf_counter() >= end:
                return
            issued += 1
            await timed(call, conversation, series)

    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    end = started + deadline_s
    await asyncio.gather(*(worker(c) for c in conversations))
    series.elapsed = time.perf_counter() - started
    series.server_cpu = cpu_seconds(server_pid) - cpu_before
    series.longest_conversation = max(c.turns for c in conversations)
    return series


def keep_log(args: argparse.Namespace) -> Path | None:
    return Path(args.server_log).resolve() if args.server_log else None


async def with_metrics(stack: Stack, targets: Targets, phase: Awaitable[T]) -> tuple[T, dict[str, float]]:
    """Run a phase between two scrapes of the service's /metrics: (its result, the diff per service turn)."""
    before, calls = await _metrics.scrape(stack.server_url), targets.calls[SERVICE]
    out = await phase
    window = _metrics.Window(before, await _metrics.scrape(stack.server_url))
    return out, window.summary(targets.calls[SERVICE] - calls)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    server_env = {"DB_POOL_SIZE": "10", "LOG_LEVEL": "INFO"}
    if not args.no_redis:
        server_env["REDIS_URL"] = REDIS_URL
    server_env.update(args.env)
    profile = resolve_profile(args.profile)
    result: dict[str, Any] = {
        "mode": "continue: one conversation per client task" if args.continue_ else "a new conversation every turn",
        "redis": not args.no_redis,
        "env_overrides": args.env,
        "profile": str(profile) if profile else None,
    }
    result["baseline"] = str(args.against) if args.against else None
    result["baseline_label"] = baseline_label(args)
    async with bench_stack(
        server_env,
        profile=profile,
        keep_log=keep_log(args),
        naive=True,
        baseline_dir=args.against,
        baseline_app=f"bench.{result['baseline_label']}_app:app",
    ) as stack:
        targets = Targets(stack, continue_conversations=args.continue_)
        try:
            result["background_load_cores"] = await wait_for_quiet(args.wait_quiet)
            assert stack.naive is not None
            pids = {SERVICE: stack.server_pid() or stack.server.pid, NAIVE: stack.naive.pid}
            c1_calls: dict[str, Call] = {
                FAKE: targets.call_fake_json,
                FAKE_SSE: targets.call_fake_stream,
                NAIVE: targets.call_naive,
                SERVICE: targets.call_service,
            }
            log(f"c=1: {args.warmup} warm-up + {args.requests} requests per target, in blocks of {args.c1_block}")
            cpu_before, calls_before = {n: cpu_seconds(pid) for n, pid in pids.items()}, dict(targets.calls)
            (c1, c1_first), result["c1_metrics"] = await with_metrics(
                stack, targets, sequential(c1_calls, args.warmup, args.requests, args.c1_block)
            )
            for name, pid in pids.items():
                # Only /chat reaches a server, so its CPU over the phase is all /chat turns (warm-up included).
                c1[name].server_cpu = (cpu_seconds(pid) - cpu_before[name]) * (
                    len(c1[name].latencies) / max(targets.calls[name] - calls_before[name], 1)
                )
            result["c1"] = {name: s.summary() for name, s in c1.items()}
            result["c1_after_idle"] = {name: s.summary() for name, s in c1_first.items() if s.latencies}

            # Interleaved slices (rotating who goes first), summed per target: this box's speed drifts
            # by ±15% over seconds, and a ratio of two phases run one after the other would carry it.
            c8 = {name: Series() for name in (FAKE, NAIVE, SERVICE)}
            c8_metrics: dict[str, dict[str, float]] = {}
            plan = [
                (FAKE, targets.call_fake_json, pids[SERVICE]),
                (NAIVE, targets.call_naive, pids[NAIVE]),
                (SERVICE, targets.call_service, pids[SERVICE]),
            ]
            slices = 1 if args.c8_turns else args.c8_slices
            what = f"{args.c8_turns} requests" if args.c8_turns else f"{args.c8_seconds:.0f} s in {slices} slices"
            log(f"c={args.concurrency}: each target for {what}, interleaved")
            before, service_calls = await _metrics.scrape(stack.server_url), targets.calls[SERVICE]
            for n in range(slices):
                for name, call, pid in plan[n % 3 :] + plan[: n % 3]:
                    part = await concurrent(call, args.concurrency, args.c8_seconds / slices, args.c8_turns, pid)
                    c8[name].merge(part)
            window = _metrics.Window(before, await _metrics.scrape(stack.server_url))
            c8_metrics[SERVICE] = window.summary(targets.calls[SERVICE] - service_calls)
            result["c8_metrics"] = c8_metrics[SERVICE]
            result["c8"] = {name: s.summary() for name, s in c8.items()}
        finally:
            await targets.aclose()
    for key, report, name in (("server_log", stack.log_report, SERVICE), ("naive_log", stack.naive_log_report, NAIVE)):
        result[key] = report.summary(targets.calls[name]) if report else {}
    result["naive_log_tail"] = stack.naive_log_tail
    all_turns = sum(targets.calls.values())
    xacts = stack.xacts_used()
    result["pg_xacts_per_turn_both_servers"] = {k: v / all_turns for k, v in xacts.items()} if xacts else {}
    result["turns_total"] = dict(targets.calls)
    fake_median = statistics.median(c1[FAKE].latencies) if c1[FAKE].latencies else math.nan
    result["added_median_c1_s"] = {
        name: statistics.median(c1[name].latencies) - fake_median if c1[name].latencies else math.nan
        for name in (NAIVE, SERVICE)
    }
    fake_first = c1_first[FAKE].latencies
    result["added_median_c1_after_idle_s"] = {
        name: statistics.median(c1_first[name].latencies) - statistics.median(fake_first)
        for name in (NAIVE, SERVICE)
        if c1_first[name].latencies and fake_first
    }
    service_tps, naive_tps = result["c8"][SERVICE]["per_s"], result["c8"][NAIVE]["per_s"]
    result["service_over_naive_c8"] = service_tps / naive_tps if naive_tps else math.nan
    return result


def _lat_row(s: dict[str, Any]) -> str:
    errors = sum(s["errors"].values())
    tail = f"   errors {errors} {s['errors']}" if errors else ""
    quantiles = "  ".join(f"{q} {fmt_ms(s[f'{q}_s']):>9}" for q in ("p50", "p90", "p99"))
    return f"{quantiles}  n={s['requests']}{tail}"


def _cpu_rows(phase: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"{name} CPU per turn", f"{phase[name]['server_cpu_ms_per_request']:.2f} ms (its uvicorn process only)")
        for name in (NAIVE, SERVICE)
    ]


def baseline_label(args: argparse.Namespace) -> str:
    """Which app serves as the baseline, bench/<label>_app.py; its rows are named after it."""
    return "floor" if args.floor else "naive"


def checks(r: dict[str, Any], args: argparse.Namespace) -> list[Check]:
    """The issue's three targets (against the floor, the two that do not name the naive handler)."""
    found = [
        check(
            f"service CPU per JSON turn (c={args.concurrency})",
            r["c8"][SERVICE]["server_cpu_ms_per_request"],
            args.target_cpu_ms,
            at_most=True,
            unit=" ms",
            digits=2,
        ),
        check(
            f"service/naive turns/s (c={args.concurrency})",
            r["service_over_naive_c8"],
            args.target_ratio,
            at_most=False,
            unit="×",
            digits=2,
        ),
        check(
            "added median (c=1)",
            r["added_median_c1_s"][SERVICE] * 1000,
            args.target_added_ms,
            at_most=True,
            unit=" ms",
        ),
    ]
    return [c for c in found if not (args.floor and "naive" in c.metric)]


def print_report(r: dict[str, Any], args: argparse.Namespace) -> None:
    mode = r["mode"]
    if r["mode"].startswith("continue"):
        c1_len = r["c1"][SERVICE]["longest_conversation_turns"]
        c8_len = r["c8"][SERVICE]["longest_conversation_turns"]
        mode += f" (c=1 conversation reached {c1_len} turns, c={args.concurrency} up to {c8_len} each)"

    def table(title: str, rows: list[tuple[str, str]]) -> None:
        # The baseline's rows are keyed "naive" in the results, whichever baseline ran.
        print_table(title, [(label.replace("naive", r["baseline_label"]), value) for label, value in rows])

    table(
        "bench.overhead — setup",
        [
            ("mode", mode),
            ("redis", "on" if r["redis"] else "off"),
            ("extra server settings", ", ".join(f"{k}={v}" for k, v in r["env_overrides"].items()) or "none"),
            ("background load before run", f"{r['background_load_cores']:.2f} cores (of 2)"),
            ("profile", r["profile"] or "off"),
            (
                "baseline (rows named naive)",
                f"the service as checked out in {r['baseline']} (--against)"
                if r["baseline"]
                else f"bench/{r['baseline_label']}_app.py",
            ),
        ],
    )
    c1_rows = [(name, _lat_row(s)) for name, s in r["c1"].items()]
    for name in (NAIVE, SERVICE):
        c1_rows.append((f"{name} added at median", fmt_ms(r["added_median_c1_s"][name])))
    # The ratio moves less between machines than either figure: read it beside the target.
    added = r["added_median_c1_s"]
    ratio = added[SERVICE] / added[NAIVE] if added[NAIVE] > 0 else math.nan
    c1_rows.append((f"{SERVICE} ÷ {NAIVE} added at median", f"{ratio:.2f}"))
    c1_rows += _cpu_rows(r["c1"])
    c1_rows += _metrics.rows(r["c1_metrics"])
    for name, s in r["c1_after_idle"].items():
        c1_rows.append((f"after idle: {name}", _lat_row(s)))
    for name, after_idle in r["added_median_c1_after_idle_s"].items():
        c1_rows.append((f"after idle: {name} added at median", fmt_ms(after_idle)))
    block = f"in blocks of {args.c1_block} per target" if args.c1_block > 1 else "round-robin per request"
    title = f"concurrency 1 ({args.requests} requests each after {args.warmup} warm-up, {block})"
    if args.c1_block > 1:
        title += "; after idle: each block's first request"
    table(title, c1_rows)
    rows = [(name, f"{s['per_s']:7.1f} /s   {_lat_row(s)}") for name, s in r["c8"].items()]
    rows.append(("service / naive turns/s", f"{r['service_over_naive_c8']:.2f}×"))
    rows += _cpu_rows(r["c8"])
    rows += _metrics.rows(r["c8_metrics"])
    per_turn = r["pg_xacts_per_turn_both_servers"]
    if per_turn:
        rows.append(
            (
                "PG transactions per turn",
                f"{per_turn['commit']:.2f} commits + {per_turn['rollback']:.2f} rollbacks "
                f"(whole database: service and naive, all {sum(r['turns_total'].values())} turns)",
            )
        )
    table(f"concurrency {args.concurrency}", rows)
    log_rows = []
    for label, info in (("service log (LOG_LEVEL=INFO)", r["server_log"]), ("naive app log", r["naive_log"])):
        if info:
            counts = f"{info['lines']} / {info['errors']} / {info['tracebacks']} / {info['warnings']}"
            log_rows.append((f"{label}: lines / errors / tracebacks / warnings", counts))
    log_rows.append(("service log lines per /chat turn", f"{r['server_log'].get('lines_per_turn') or 0:.1f}"))
    table("server logs", log_rows)
    for event, count in sorted(r["server_log"].get("events", {}).items()):
        print(f"  log {event}: {count}")
    if r["naive_log_tail"]:
        print(f"  naive app log ends:\n{r['naive_log_tail']}")
    print_checks("summary", checks(r, args))
    if r["profile"]:
        print(f"  profile written to {r['profile']} (numbers above were taken under py-spy)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description="What the service adds per turn.")
    parser.add_argument("--warmup", type=int, default=30, help="c=1 warm-up requests per target (default 30)")
    parser.add_argument("--requests", type=int, default=300, help="c=1 measured requests per target (default 300)")
    parser.add_argument(
        "--c1-block",
        type=int,
        default=10,
        help="c=1: back-to-back requests per target before the next target's turn (10); each block's first "
        "is reported apart, as after idle; 1: round-robin per request, every request after idle",
    )
    parser.add_argument("--concurrency", type=int, default=8, help="client tasks in the concurrent phase (default 8)")
    parser.add_argument("--c8-seconds", type=float, default=10.0, help="concurrent phase length per target (10 s)")
    parser.add_argument(
        "--c8-slices", type=int, default=5, help="the concurrent phase in this many interleaved slices per target (5)"
    )
    parser.add_argument("--c8-turns", type=int, default=None, help="concurrent phase: a request count instead")
    parser.add_argument(
        "--continue",
        dest="continue_",
        action="store_true",
        help="continue one conversation per client task instead of starting a new one every turn",
    )
    parser.add_argument("--no-redis", action="store_true", help="leave REDIS_URL unset")
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        metavar="DIR",
        help="A/B: serve the checkout in DIR (e.g. a `git worktree` of another commit) in the naive "
        "baseline's place, with the service's settings; the rows named naive are then that checkout",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="serve bench/floor_app.py (FastAPI, the SDK and the two statements, nothing else) in the naive "
        "baseline's place; its rows read floor",
    )
    parser.add_argument("--target-added-ms", type=float, default=4.0, help="c=1 median over the fake (4 ms)")
    parser.add_argument("--target-cpu-ms", type=float, default=4.0, help="service CPU per JSON turn (4 ms)")
    parser.add_argument("--target-ratio", type=float, default=2.0, help="c=8 service/naive turns/s (2)")
    add_common_options(
        parser,
        profile_help="run the server under py-spy; default bench/profile.svg (a .txt path gives collapsed stacks)",
    )
    args = parser.parse_args(argv)
    try:
        args.env = parse_env_overrides(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    if not (0 <= args.warmup <= 10_000 and 1 <= args.requests <= 100_000 and 1 <= args.concurrency <= 256):
        parser.error("--warmup/--requests/--concurrency out of range")
    if not 1 <= args.c1_block <= 1000:
        parser.error("--c1-block must be in [1, 1000]")
    if not 0 < args.c8_seconds <= 600:
        parser.error("--c8-seconds must be in (0, 600]")
    if not 1 <= args.c8_slices <= 100:
        parser.error("--c8-slices must be in [1, 100]")
    if args.floor and args.against is not None:
        parser.error("--floor and --against each take the baseline's place: give one")
    if args.against is not None and not (args.against / "app" / "main.py").is_file():
        parser.error(f"--against: {args.against} has no app/main.py")
    return args


def main(argv: list[str] | None = None) -> int:
    return script_main(parse_args(argv), run, print_report)


if __name__ == "__main__":
    sys.exit(main())
