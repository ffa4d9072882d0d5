"""The service's GET /metrics, scraped before and after a phase and diffed.

Counters give per-turn costs (statements, commits, pool checkouts); histograms give percentiles of
what happened during the phase only (event-loop lag, pool wait), interpolated within a bucket the
way Prometheus' histogram_quantile does. A metric the service does not expose reads as n/a.
"""

from __future__ import annotations

import math
import re

import httpx

from bench._harness import fmt_ms

LOOP_LAG = "agentchat_event_loop_lag_seconds"
POOL_WAIT = "agentchat_db_pool_wait_seconds"
HISTOGRAMS = (("event-loop lag", LOOP_LAG), ("pool wait", POOL_WAIT))
COUNTERS = (
    ("statements", "agentchat_db_statements_total"),
    ("commits", "agentchat_db_commits_total"),
    ("pool checkouts", "agentchat_db_pool_checkouts_total"),
)

# name{labels} value — label values may hold anything but an unescaped quote.
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[^"}]|"(?:[^"\\]|\\.)*")*)\})?\s+(\S+)')
_LE = re.compile(r'(?:^|,)\s*le="([^"]*)"')

# (sample name, le or None) -> value, summed over every other label.
Samples = dict[tuple[str, str | None], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:  # comments, blank lines
            continue
        name, labels, raw = match.groups()
        le = _LE.search(labels or "")
        key = (name, le.group(1) if le else None)
        try:
            samples[key] = samples.get(key, 0.0) + float(raw)
        except ValueError:
            continue
    return samples


async def scrape(server_url: str) -> Samples:
    """The server's metrics now; empty (every figure n/a) when /metrics does not answer."""
    try:
        async with httpx.AsyncClient(base_url=server_url, timeout=10.0) as client:
            response = await client.get("/metrics")
    except httpx.HTTPError:
        return {}
    return parse(response.text) if response.status_code == 200 else {}


class Window:
    """What changed between two scrapes."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.delta = {key: value - before.get(key, 0.0) for key, value in after.items()}

    def counter(self, name: str) -> float:
        return self.delta.get((name, None), math.nan)

    def quantile(self, histogram: str, q: float) -> float:
        buckets = sorted(
            (float(le), count) for (name, le), count in self.delta.items() if name == f"{histogram}_bucket" and le
        )
        if not buckets or buckets[-1][1] <= 0:
            return math.nan
        rank = q * buckets[-1][1]
        low, below = 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if math.isinf(bound):
                    return low  # above the top finite bucket: its bound is all that is known
                return bound if count == below else low + (bound - low) * (rank - below) / (count - below)
            low, below = bound, count
        return math.nan

    def summary(self, turns: int) -> dict[str, float]:
        """Per-turn DB counts and the latency histograms' p50/p99 (NaN: not exposed, or nothing seen)."""
        out = {f"{label} per turn": self.counter(name) / turns if turns else math.nan for label, name in COUNTERS}
        out["turns"] = turns
        for label, name in HISTOGRAMS:
            out[f"{label} p50"], out[f"{label} p99"] = self.quantile(name, 0.5), self.quantile(name, 0.99)
            out[f"{label} observations"] = self.delta.get((f"{name}_count", None), math.nan)
        return out


def rows(summary: dict[str, float]) -> list[tuple[str, str]]:
    """A Window.summary as table rows."""
    per_turn = "  ".join(
        f"{label} " + ("n/a" if math.isnan(v := summary[f"{label} per turn"]) else f"{v:.2f}") for label, _ in COUNTERS
    )
    out = [(f"per turn (/metrics, {summary['turns']:.0f} turns)", per_turn)]
    for label, _ in HISTOGRAMS:
        seen = summary[f"{label} observations"]
        count = "n/a" if math.isnan(seen) else f"{seen:.0f} observations"
        out.append(
            (f"{label} p50 / p99", f"{fmt_ms(summary[f'{label} p50'])} / {fmt_ms(summary[f'{label} p99'])} ({count})")
        )
    return out
