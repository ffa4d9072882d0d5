"""The long soak: one `python -X dev` server under mixed, faulty traffic for minutes.

    python -m bench.soak                          # 3 minutes, 20 clients
    python -m bench.soak --minutes 30 --concurrency 40

The longer variant of tests/resilience/test_faults.py: the same traffic mix (normal JSON and SSE
turns, clients leaving mid-stream, upstream 429/529/500, mid-stream errors, drops, hangs), against
one uvicorn worker with a pool of 5 and no overflow, real Postgres and Redis, and every ~30 s the
app's Postgres connections terminated (pg_terminate_backend) and its Redis connections killed
(CLIENT KILL). Every --interval seconds one line of gauges; at the end min/max/last of each
series and the growth of RSS and open FDs from the first to the last third of the run (a leak is
steady growth, not a warm-up step).

Exit code 0 iff no 500 (HTTP 500, or an `internal_error` in a JSON body or SSE `error` event) and no
leak marker (`non-checked-in`, `Task was destroyed`, `Unclosed`, `ResourceWarning`) in the server log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from redis.asyncio import Redis

from bench._harness import (
    PG_ADMIN_DSN,
    REDIS_URL,
    Base,
    bench_base,
    fd_count,
    leak_lines,
    log,
    parse_env_overrides,
    raise_nofile,
    redis_clients_named,
    rss_kib,
    run_or_exit,
    scan_log,
)
from testkit.faults import MIX  # the fault suite's mix, shared

POOL = 5
CLIENT_DEADLINE = 30.0  # per turn; TURN_TIMEOUT is 6 s, so only a stuck server gets near it
CONTINUE_PROBABILITY = 0.3  # a turn continues the worker's last good conversation (history grows)
MAX_CONVERSATION_TURNS = 10
MAX_TURNS_PER_MINUTE = 30_000  # a hard cap on the whole run, whatever the speed
CLASSES = ("ok", "left", "4xx", "5xx", "sse_err", "xport")


@dataclass
class Tally:
    done: int = 0
    classes: Counter[str] = field(default_factory=Counter)  # CLASSES
    detail: Counter[str] = field(default_factory=Counter)  # "json 502", "sse error upstream_timeout"...
    http_500: int = 0
    internal_errors: int = 0  # `internal_error` in a JSON error body or an SSE error event
    internal_samples: list[str] = field(default_factory=list)

    def add(self, cls: str, detail: str) -> None:
        self.done += 1
        self.classes[cls] += 1
        self.detail[detail] += 1

    def internal(self, what: str) -> None:
        self.internal_errors += 1
        if len(self.internal_samples) < 5:
            self.internal_samples.append(what[:300])


@dataclass
class Sample:
    t: float
    done: int
    rate: float  # turns/s since the previous sample
    classes: dict[str, int]
    pg: int  # connections with our application_name
    pg_idle_tx: int  # of them idle in transaction (aborted or not)
    redis: int  # CLIENT LIST entries named APP_NAME
    rss_mib: float
    fds: int
    fake_open: int
    kills: int  # kill rounds so far


def _error_type(body: bytes | str) -> str:
    try:
        data = json.loads(body)
        return str(data["error"]["type"])
    except (ValueError, KeyError, TypeError):
        return "?"


async def one_turn(
    http: httpx.AsyncClient,
    headers: dict[str, str],
    tally: Tally,
    rng: random.Random,
    text: str,
    behaviour: str,
    conversation_id: str | None,
) -> str | None:
    """One turn; counts its outcome. Returns the conversation id when the turn ended well."""
    stream = behaviour == "leave" or rng.random() < 0.5
    body: dict[str, Any] = {"message": text, "stream": stream}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    kind = "sse" if stream else "json"
    try:
        async with asyncio.timeout(CLIENT_DEADLINE):
            if not stream:
                r = await http.post("/chat", json=body, headers=headers)
                if r.status_code == 200:
                    tally.add("ok", "json 200")
                    return str(r.json()["conversation_id"])
                etype = _error_type(r.content)
                tally.add(f"{r.status_code // 100}xx", f"json {r.status_code} {etype}")
                if r.status_code == 500 or etype == "internal_error":
                    tally.http_500 += r.status_code == 500
                    tally.internal(f"json {r.status_code}: {r.text}")
                return None
            async with http.stream("POST", "/chat", json=body, headers=headers) as r:
                if r.status_code != 200:
                    raw = await r.aread()
                    etype = _error_type(raw)
                    tally.add(f"{r.status_code // 100}xx", f"sse {r.status_code} {etype}")
                    if r.status_code == 500 or etype == "internal_error":
                        tally.http_500 += r.status_code == 500
                        tally.internal(f"sse {r.status_code}: {raw[:200]!r}")
                    return None
                event, events, leave_after = "", 0, rng.randint(1, 6)
                conv: str | None = None
                last = ""
                async for line in r.aiter_lines():
                    if not line:
                        event = ""
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("data:"):
                        events += 1
                        last = event
                        if event == "start":
                            conv = json.loads(line[5:])["conversation_id"]
                        elif event == "error":
                            etype = _error_type(line[5:])
                            tally.add("sse_err", f"sse error {etype}")
                            if etype == "internal_error":
                                tally.internal(f"sse error event: {line[:200]}")
                            return None
                        elif event == "end":
                            tally.add("ok", "sse end")
                            return conv
                        if behaviour == "leave" and events >= leave_after:
                            tally.add("left", "sse left")
                            return None
                tally.add("xport", f"sse closed after {last or 'nothing'}")
                return None
    except TimeoutError:
        tally.add("xport", f"{kind} client deadline")
    except httpx.HTTPError as exc:
        tally.add("xport", f"{kind} {type(exc).__name__}")
    return None


async def worker(
    n: int, http: httpx.AsyncClient, headers: dict[str, str], tally: Tally, seed: int, until: float, cap: int
) -> None:
    rng = random.Random(seed * 1000 + n)
    population = [(m, b) for w, m, b in MIX for _ in range(w)]
    conversation: str | None = None
    turns_in_it = 0
    while time.monotonic() < until and tally.done < cap:
        message, behaviour = rng.choice(population)
        carry_on = conversation is not None and turns_in_it < MAX_CONVERSATION_TURNS
        cid = conversation if carry_on and rng.random() < CONTINUE_PROBABILITY else None
        # Unique text: [[fail_first]] counts by exact text, and a log line can be traced to its turn.
        text = f"{message} #{n}-{uuid.uuid4().hex[:8]}"
        got = await one_turn(http, headers, tally, rng, text, behaviour, cid)
        if got is not None:
            turns_in_it = turns_in_it + 1 if got == conversation else 1
            conversation = got


class Probe:
    """Gauges of the server under test, and the faults (killing its DB and Redis connections)."""

    def __init__(self, base: Base, app_name: str, pid: int) -> None:
        self.base, self.app_name, self.pid = base, app_name, pid
        self.redis = Redis.from_url(
            REDIS_URL, client_name=f"{base.name}-probe", socket_connect_timeout=2, socket_timeout=5
        )
        self.fake = httpx.AsyncClient(base_url=base.fake_url, timeout=5.0)
        self.kills = 0
        self.pg_killed = 0
        self.redis_killed = 0

    async def aclose(self) -> None:
        await self.fake.aclose()
        await self.redis.aclose()

    async def _pg(self) -> asyncpg.Connection:
        return await asyncpg.connect(
            PG_ADMIN_DSN, timeout=5, server_settings={"application_name": f"{self.base.name}-probe"}
        )

    async def pg_states(self) -> dict[str, int]:
        conn = await self._pg()
        try:
            rows = await conn.fetch(
                "SELECT coalesce(state, 'none') AS state, count(*) AS n FROM pg_stat_activity "
                "WHERE application_name = $1 GROUP BY 1",
                self.app_name,
            )
        finally:
            await conn.close()
        return {str(r["state"]): int(r["n"]) for r in rows}

    async def redis_count(self) -> int:
        return len(await redis_clients_named(self.redis, self.app_name))

    async def fake_open(self) -> int:
        return int((await self.fake.get("/_stats")).json()["open_streams"])

    async def kill(self) -> tuple[int, int]:
        """pg_terminate_backend on every app connection, CLIENT KILL on every app Redis client."""
        conn = await self._pg()
        try:
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
                self.app_name,
            )
        finally:
            await conn.close()
        killed_redis = 0
        for client in await redis_clients_named(self.redis, self.app_name):
            killed_redis += await self.redis.client_kill_filter(_id=client["id"])
        self.kills += 1
        self.pg_killed += len(rows)
        self.redis_killed += killed_redis
        return len(rows), killed_redis

    async def sample(self, t: float, tally: Tally, previous: Sample | None) -> Sample:
        pg = pg_idle_tx = redis = fake_open = -1
        try:
            states = await self.pg_states()
            pg = sum(states.values())
            pg_idle_tx = sum(n for s, n in states.items() if s.startswith("idle in transaction"))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log(f"sample: Postgres unreadable: {exc!r}")
        try:
            redis = await self.redis_count()
        except Exception as exc:  # redis-py raises its own hierarchy; a sample must never stop the soak
            log(f"sample: Redis unreadable: {exc!r}")
        try:
            fake_open = await self.fake_open()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            log(f"sample: fake unreadable: {exc!r}")
        rate = 0.0
        if previous is not None and t > previous.t:
            rate = (tally.done - previous.done) / (t - previous.t)
        return Sample(
            t=t,
            done=tally.done,
            rate=rate,
            classes=dict(tally.classes),
            pg=pg,
            pg_idle_tx=pg_idle_tx,
            redis=redis,
            rss_mib=rss_kib(self.pid)[0] / 1024,
            fds=fd_count(self.pid),
            fake_open=fake_open,
            kills=self.kills,
        )


HEADER = (
    f"{'elapsed':>7} {'turns':>6} {'turns/s':>7} "
    + " ".join(f"{c:>5}" for c in CLASSES)
    + f" {'500':>4} | {'pg':>3} {'idle-tx':>7} {'redis':>5} {'RSS MiB':>8} {'FDs':>5} {'fake open':>9} {'kills':>5}"
)


def sample_line(s: Sample, tally_500: int) -> str:
    return (
        f"{s.t:6.0f}s {s.done:6d} {s.rate:7.1f} "
        + " ".join(f"{s.classes.get(c, 0):5d}" for c in CLASSES)
        + f" {tally_500:4d} | {s.pg:3d} {s.pg_idle_tx:7d} {s.redis:5d} {s.rss_mib:8.1f} {s.fds:5d} {s.fake_open:9d}"
        f" {s.kills:5d}"
    )


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute; NaN with fewer than 3 points."""
    if len(points) < 3:
        return math.nan
    mx = mean([p[0] for p in points])
    my = mean([p[1] for p in points])
    den = sum((x - mx) ** 2 for x, _ in points)
    return math.nan if den == 0 else sum((x - mx) * (y - my) for x, y in points) / den * 60


def growth(samples: Sequence[Sample], attr: str) -> tuple[float, float, float, float]:
    """(mean of the first third, mean of the last third, difference, slope per minute of the last 2/3)."""
    values = [(s.t, float(getattr(s, attr))) for s in samples if getattr(s, attr) >= 0]
    third = max(len(values) // 3, 1)
    first = mean([v for _, v in values[:third]])
    last = mean([v for _, v in values[-third:]])
    return first, last, last - first, slope_per_minute(values[third:])


async def stored_statuses(db_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://", 1), timeout=10)
    try:
        rows = await conn.fetch("SELECT role, status, count(*) AS n FROM messages GROUP BY 1, 2 ORDER BY 1, 2")
    finally:
        await conn.close()
    return {f"{r['role']} {r['status']}": int(r["n"]) for r in rows}


async def settle(probe: Probe, within: float = 15.0) -> None:
    """After the traffic: wait (bounded) for upstream streams to close and the pool to go idle."""
    for _ in range(int(within / 0.5)):
        try:
            states = await probe.pg_states()
            busy = sum(n for s, n in states.items() if s != "idle")
            if await probe.fake_open() == 0 and busy == 0:
                return
        except (OSError, asyncpg.PostgresError, httpx.HTTPError, TimeoutError, ValueError, KeyError):
            pass
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    duration = args.minutes * 60.0
    out: dict[str, Any] = {}
    async with bench_base() as base:
        app_name = f"{base.name}-soak"
        env = base.server_env(
            app_name,
            f"{base.name}:",
            {
                "REDIS_URL": REDIS_URL,
                "DB_POOL_SIZE": str(POOL),
                "DB_MAX_OVERFLOW": "0",
                "DB_POOL_TIMEOUT": "3",
                "LLM_MAX_RETRIES": "1",
                "LLM_READ_TIMEOUT": "2",
                "TURN_TIMEOUT": "6",
                "SHUTDOWN_GRACE_SECONDS": "2",
                "LOG_LEVEL": args.log_level,
                **args.env,
            },
        )
        server, url = await base.start_server("server", env, dev=True)
        log(f"server (python -X dev) at {url}, pid {server.pid}, APP_NAME={app_name}; fake at {base.fake_url}")
        probe = Probe(base, app_name, server.pid)
        tally = Tally()
        samples: list[Sample] = []
        try:
            headers = {"Authorization": f"Bearer {base.api_key}"}
            limits = httpx.Limits(max_connections=args.concurrency * 2, max_keepalive_connections=args.concurrency)
            async with httpx.AsyncClient(base_url=url, timeout=CLIENT_DEADLINE, limits=limits) as http:
                start = time.monotonic()
                until = start + duration
                cap = int(MAX_TURNS_PER_MINUTE * args.minutes)
                print(
                    f"bench.soak — {args.minutes:g} min, {args.concurrency} clients, 1 worker (python -X dev), "
                    f"pool {POOL} + 0 overflow, kill PG+Redis connections every {args.kill_every:g} s",
                    flush=True,
                )
                print(HEADER, flush=True)
                samples.append(await probe.sample(0.0, tally, None))
                print(sample_line(samples[-1], tally.internal_errors), flush=True)
                workers = [
                    asyncio.create_task(worker(n, http, headers, tally, args.seed, until, cap))
                    for n in range(args.concurrency)
                ]
                next_sample = start + args.interval
                next_kill = start + args.kill_every
                try:
                    # The supervisor: bounded by the run's length (plus the workers' last turns).
                    for _ in range(int((duration + 2 * CLIENT_DEADLINE) / 0.25) + 1):
                        now = time.monotonic()
                        if now >= next_kill and now < until:
                            next_kill += args.kill_every
                            try:
                                pg_n, redis_n = await probe.kill()
                                log(f"t={now - start:.0f}s killed {pg_n} Postgres and {redis_n} Redis connections")
                            except Exception as exc:  # a failed fault is reported, never fatal
                                log(f"kill round failed: {exc!r}")
                        if now >= next_sample and now <= until + args.interval / 2:
                            next_sample += args.interval
                            samples.append(await probe.sample(now - start, tally, samples[-1]))
                            print(sample_line(samples[-1], tally.internal_errors), flush=True)
                        if all(w.done() for w in workers):
                            break
                        await asyncio.sleep(0.25)
                finally:  # also on Ctrl-C / SIGTERM: no load worker outlives the run
                    for w in workers:
                        w.cancel()
                    results = await asyncio.gather(*workers, return_exceptions=True)
                crashed = [
                    r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
                ]
                for crash in crashed:
                    log(f"a load worker crashed: {crash!r}")
                wall = time.monotonic() - start
            await settle(probe)
            after = await probe.sample(time.monotonic() - start, tally, None)
            try:
                stored = await stored_statuses(base.db_url)
            except (OSError, asyncpg.PostgresError) as exc:
                stored = {}
                log(f"could not count stored messages: {exc!r}")
            # Stop the server (SIGTERM: it drains and closes its pools), then read what it left.
            server.stop(grace=20.0)
            exit_code = server.popen.returncode
            pg_after_exit = sum((await probe.pg_states()).values())
            redis_after_exit = await probe.redis_count()
        finally:
            await probe.aclose()
        leaks, leak_samples = leak_lines(server.log_path)
        report = scan_log(server.log_path)
        if args.server_log:
            shutil.copyfile(server.log_path, args.server_log)
            log(f"server log copied to {args.server_log}")
        out = {
            "minutes": args.minutes,
            "concurrency": args.concurrency,
            "wall_s": wall,
            "tally": tally,
            "samples": samples,
            "after_settle": after,
            "stored": stored,
            "exit_code": exit_code,
            "pg_after_exit": pg_after_exit,
            "redis_after_exit": redis_after_exit,
            "leaks": leaks,
            "leak_samples": leak_samples,
            "log": report,
            "crashed_workers": len(crashed),
            "kills": (probe.kills, probe.pg_killed, probe.redis_killed),
        }
    return out


def passed(r: dict[str, Any]) -> bool:
    tally: Tally = r["tally"]
    return tally.http_500 == 0 and tally.internal_errors == 0 and r["leaks"] == 0


def print_summary(r: dict[str, Any]) -> None:
    tally: Tally = r["tally"]
    samples: list[Sample] = r["samples"]
    after: Sample = r["after_settle"]
    timed = samples[1:]  # the t=0 baseline is before any traffic
    print(f"\nsummary — {tally.done} turns in {r['wall_s']:.0f} s ({tally.done / max(r['wall_s'], 1e-9):.1f} turns/s)")
    print("-" * 78)
    print(f"{'series':<28}{'min':>10}{'max':>10}{'last':>10}")
    series = [
        ("turns/s", "rate", "{:.1f}"),
        ("pg connections", "pg", "{:.0f}"),
        ("pg idle in transaction", "pg_idle_tx", "{:.0f}"),
        ("redis clients", "redis", "{:.0f}"),
        ("server RSS MiB", "rss_mib", "{:.1f}"),
        ("server open FDs", "fds", "{:.0f}"),
        ("fake open streams", "fake_open", "{:.0f}"),
    ]
    for label, attr, fmt in series:
        values = [getattr(s, attr) for s in timed if getattr(s, attr) >= 0]
        if not values:
            print(f"{label:<28}{'n/a':>10}")
            continue
        print(f"{label:<28}" + "".join(f"{fmt.format(v):>10}" for v in (min(values), max(values), values[-1])))
    print(
        f"{'after the traffic settled':<28}pg {after.pg} (idle in tx {after.pg_idle_tx}), redis {after.redis}, "
        f"RSS {after.rss_mib:.1f} MiB, FDs {after.fds}, fake open {after.fake_open}"
    )
    for label, attr, unit in (("RSS", "rss_mib", "MiB"), ("FDs", "fds", "")):
        first, last, diff, slope = growth(timed, attr)
        pct = diff / first * 100 if first else math.nan
        print(
            f"{label + ' growth':<28}first third {first:.1f} → last third {last:.1f} {unit}: "
            f"{diff:+.1f} ({pct:+.1f}%); trend over the last 2/3 {slope:+.2f}{unit and ' ' + unit}/min"
        )
    print(f"{'outcomes':<28}" + ", ".join(f"{c} {tally.classes.get(c, 0)}" for c in CLASSES))
    for detail, n in sorted(tally.detail.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"    {detail:<40}{n:>7}")
    kills, pg_killed, redis_killed = r["kills"]
    print(f"{'faults injected':<28}{kills} rounds: {pg_killed} Postgres backends, {redis_killed} Redis clients killed")
    print(f"{'stored messages':<28}" + (", ".join(f"{k}: {v}" for k, v in r["stored"].items()) or "n/a"))
    print(
        f"{'server exit':<28}code {r['exit_code']}; afterwards pg connections {r['pg_after_exit']}, "
        f"redis clients {r['redis_after_exit']}"
    )
    report = r["log"]
    print(
        f"{'server log':<28}{report.lines} lines, {report.errors} errors, {report.warnings} warnings, "
        f"{report.tracebacks} tracebacks"
    )
    for event, n in sorted(report.by_event.items(), key=lambda kv: -kv[1])[:12]:
        print(f"    {event[:100]:<100} {n}")
    if r["crashed_workers"]:
        print(f"{'load workers crashed':<28}{r['crashed_workers']} (a bug in the bench, see stderr)")
    print(
        f"{'500s':<28}{tally.http_500} HTTP 500, {tally.internal_errors} internal_error in all "
        f"(must be 0){'' if not tally.internal_samples else ':'}"
    )
    for line in tally.internal_samples:
        print(f"    {line}")
    print(f"{'leak markers in server log':<28}{r['leaks']}{':' if r['leaks'] else ''}")
    for line in r["leak_samples"]:
        print(f"    {line}")
    print(f"\nresult: {'PASS' if passed(r) else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the traffic runs (default 3, max 60)")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent clients (default 20)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between gauge lines (default 10)")
    parser.add_argument("--kill-every", type=float, default=30.0, help="seconds between connection kills (default 30)")
    parser.add_argument("--seed", type=int, default=20261122, help="traffic seed")
    parser.add_argument("--log-level", default="WARNING", help="server LOG_LEVEL (default WARNING: a lean log)")
    parser.add_argument("--server-log", metavar="PATH", help="keep a copy of the server's log here")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting, repeatable"
    )
    args = parser.parse_args(argv)
    try:
        args.env = parse_env_overrides(args.env)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 < args.minutes <= 60:
        parser.error("--minutes must be in (0, 60]")
    if not 1 <= args.concurrency <= 500:
        parser.error("--concurrency must be between 1 and 500")
    if not 1 <= args.interval <= 600:
        parser.error("--interval must be between 1 and 600 seconds")
    if not 1 <= args.kill_every <= 3600:
        parser.error("--kill-every must be between 1 and 3600 seconds")
    raise_nofile()
    result = run_or_exit(lambda: run(args))
    print_summary(result)
    return 0 if passed(result) else 1


if __name__ == "__main__":
    sys.exit(main())
