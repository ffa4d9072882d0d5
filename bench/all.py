"""`make bench`: the issue's benchmarks one after another, each printing its report, then one summary.

    python -m bench.all                       # every benchmark in RUNS, in order
    python -m bench.all --only overhead --only burst50

They run in sequence (never two at once: they share the machine's two cores with everything else).
Exit code 1 only if a benchmark could not run; a MISS is a figure to read, not a failure.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys

from bench import long_conversation, overhead, paced, streams, transport
from bench._harness import Check, print_checks, raise_nofile, run_or_exit

RUNS = {
    "overhead": (overhead, []),
    "deltas": (streams, ["--scenario", "deltas"]),
    "paced": (paced, []),
    "ramp600": (streams, ["--scenario", "ramp600"]),
    "real400": (streams, ["--scenario", "real400"]),
    "burst50": (streams, ["--scenario", "burst50"]),
    "quiet": (streams, ["--scenario", "quiet"]),
    "transport": (transport, []),
    "long_conversation": (long_conversation, []),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.all", description="The issue's benchmarks and targets.")
    parser.add_argument("--only", action="append", choices=list(RUNS), help="run just these (repeatable)")
    args = parser.parse_args(argv)
    raise_nofile()  # before any subprocess: they inherit it
    summary: list[Check] = []
    failed = 0
    for name in args.only or RUNS:
        module, bench_argv = RUNS[name]
        print(f"\n==== python -m {module.__name__} {' '.join(bench_argv)}".rstrip(), flush=True)
        bench_args = module.parse_args(bench_argv)
        try:
            result = run_or_exit(functools.partial(module.run, bench_args))
        except SystemExit as exc:
            if exc.code == 130:  # interrupted: stop here, everything is cleaned up
                raise
            summary.append(Check(f"{name}: ran", "set-up failed (see above)", "runs", False))
            failed += 1
            continue
        module.print_report(result, bench_args)
        summary += [dataclasses.replace(c, metric=f"{name}: {c.metric}") for c in module.checks(result, bench_args)]
    print_checks("bench summary: metric / value / target", summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
