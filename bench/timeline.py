"""Where a c=1 JSON turn spends its time inside the server: one mark per point of its path.

    python -m bench.timeline                # 1,000 turns, a new conversation each
    python -m bench.timeline --turns 3000

The service runs alone (no naive baseline beside it) with bench/timeline_site/ on its PYTHONPATH:
that sitecustomize wraps uvicorn's, FastAPI's, the SDK's and our own functions to take a
timestamp per turn at each point (a probe: a few µs per mark). The client alternates one /chat turn
and one call of the fake model directly, back to back; each mark's median offset from the moment
the request's bytes arrived is printed in order, with the step from the mark before it. Also
printed: the service's and the fake's p50, the difference (what the service adds) and the server's
CPU per turn from /proc. Always exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._harness import REDIS_URL, bench_stack, cpu_seconds, log, print_table, raise_nofile, run_or_exit
from bench.overhead import Conversation, Targets

SITE = Path(__file__).with_name("timeline_site")
WARMUP = 100


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="agentchat-timeline-")) / "marks.json"
    path = os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p)
    env = {"DB_POOL_SIZE": "10", "LOG_LEVEL": "INFO", "REDIS_URL": REDIS_URL, "PYTHONPATH": path}
    env["TIMELINE_OUT"] = str(out)
    service: list[float] = []
    fake: list[float] = []
    async with bench_stack(env) as stack:
        stack.naive_url = stack.server_url  # Targets wants one; no naive server here
        targets = Targets(stack, continue_conversations=False)
        conversation = Conversation()
        try:
            for _ in range(WARMUP):
                await targets.call_service(conversation)
                await targets.call_fake_json(conversation)
            log(f"{args.turns} turns, each followed by one call of the fake directly")
            cpu_before = cpu_seconds(stack.server.pid)
            for _ in range(args.turns):
                started = time.perf_counter()
                await targets.call_service(conversation)
                service.append(time.perf_counter() - started)
                started = time.perf_counter()
                await targets.call_fake_json(conversation)
                fake.append(time.perf_counter() - started)
            cpu = (cpu_seconds(stack.server.pid) - cpu_before) / args.turns
        finally:
            await targets.aclose()
    turns = json.loads(out.read_text())[WARMUP:] if out.exists() else []  # written when the server exited
    offsets: dict[str, float] = {}
    for name in {name for turn in turns for name in turn}:
        values = [(turn[name] - turn["in"]) / 1000 for turn in turns if name in turn and "in" in turn]
        offsets[name] = statistics.median(values)
    return {
        "turns": args.turns,
        "service_p50_s": statistics.median(service),
        "fake_p50_s": statistics.median(fake),
        "server_cpu_per_turn_s": cpu,
        "marks_us": dict(sorted(offsets.items(), key=lambda item: item[1])),
        "turns_with_marks": len(turns),
    }


def print_report(r: dict[str, Any]) -> None:
    added = r["service_p50_s"] - r["fake_p50_s"]
    print_table(
        "bench.timeline — c=1, the service alone",
        [
            ("service /chat p50", f"{r['service_p50_s'] * 1000:.2f} ms"),
            ("fake direct p50", f"{r['fake_p50_s'] * 1000:.2f} ms"),
            ("added at the median", f"{added * 1000:.2f} ms ({r['service_p50_s'] / r['fake_p50_s']:.1f}× the fake)"),
            ("server CPU per turn", f"{r['server_cpu_per_turn_s'] * 1000:.2f} ms (its process, the probe included)"),
        ],
    )
    rows, before = [], 0.0
    for name, offset in r["marks_us"].items():
        rows.append((name, f"at {offset:7.0f} µs   +{offset - before:6.0f} µs"))
        before = offset
    print_table(f"median offset from the request's arrival ({r['turns_with_marks']} turns)", rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.timeline", description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=1000, help="measured turns after 100 warm-up (1,000)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.turns <= 100_000:
        parser.error("--turns must be in [1, 100000]")
    raise_nofile()
    result = run_or_exit(lambda: run(args))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
