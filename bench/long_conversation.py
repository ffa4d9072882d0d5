"""A long conversation, compaction on and off: the prompt-cache read share and the tokens sent per turn.

    python -m bench.long_conversation                 # 150 turns of ~1,200 characters, a 16k window
    python -m bench.long_conversation --turns 300 --window 32000

One fake model (testkit/fake_llm, its summarizer included), one Postgres database per mode, the app
in-process. Each mode runs the same conversation: `on` is compaction as configured by default
(compact_at 0.75 of the window), `off` drops the oldest whole turns past the same budget, as before
issue #27. The fake reports no real cache, so the bench replays every recorded request through a
model of Anthropic's prompt cache: an entry is written at each `cache_control` breakpoint (the
exact bytes of everything before it, cache marks aside), and a request reads the longest earlier
entry that its prefix matches at one of its own breakpoints or up to 20 blocks before one. The
share is read tokens over all input tokens (tokens: characters / 4), summarizer calls included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import uuid
from typing import Any

import httpx

from bench._harness import Check, check, drop_database, log, prepare_database, print_table, run_or_exit
from testkit.fake_llm import FakeLLMServer
from testkit.fake_llm.summarizer import is_summary_request

LOOKBACK = 20  # blocks before a breakpoint the provider also checks for an entry


def _bare(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _bare(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_bare(v) for v in value]
    return value


def _blocks(body: dict[str, Any]) -> list[tuple[str, bool]]:
    """The request as the cache sees it: each block's bytes (cache marks aside) and whether it is a breakpoint."""
    out: list[tuple[str, bool]] = []
    for tool in body.get("tools") or []:
        out.append((json.dumps(["tool", _bare(tool)], sort_keys=True), "cache_control" in tool))
    system = body.get("system") or []
    for block in [{"type": "text", "text": system}] if isinstance(system, str) else system:
        out.append((json.dumps(["system", _bare(block)], sort_keys=True), "cache_control" in block))
    for message in body["messages"]:
        content = message["content"]
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content:
            out.append((json.dumps([message["role"], _bare(block)], sort_keys=True), "cache_control" in block))
    return out


def cache_replay(bodies: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """Input, cache-read and cache-write tokens of each of these requests, in order, under the model above."""
    entries: set[str] = set()
    out: list[tuple[int, int, int]] = []
    for body in bodies:
        blocks = _blocks(body)
        digests, sizes, running = [], [], hashlib.sha256()
        size = 0
        for raw, _ in blocks:
            running.update(raw.encode())
            digests.append(running.copy().hexdigest())
            size += len(raw) // 4
            sizes.append(size)
        breakpoints = [i for i, (_, marked) in enumerate(blocks) if marked]
        hit = -1
        for point in breakpoints:
            for i in range(point, max(-1, point - LOOKBACK - 1), -1):
                if digests[i] in entries:
                    hit = max(hit, i)
                    break
        hit_tokens = sizes[hit] if hit >= 0 else 0
        written = max(0, sizes[breakpoints[-1]] - hit_tokens) if breakpoints else 0
        out.append((sizes[-1] if sizes else 0, hit_tokens, written))
        entries.update(digests[i] for i in breakpoints)
    return out


async def converse(fake: FakeLLMServer, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    from app.core.config import Settings
    from app.main import create_app
    from app.state import resources_of

    db_name = f"bench_long_{mode}_{uuid.uuid4().hex[:6]}"
    db_url, key = await prepare_database(db_name)
    try:
        fits = args.window - 1024
        settings = Settings(
            database_url=db_url,
            anthropic_api_key="bench-key",
            anthropic_base_url=fake.url,
            llm_provider="anthropic",
            llm_model="claude-bench",
            llm_max_tokens=1024,
            agent_context_window=args.window,
            agent_compaction="auto" if mode == "on" else "off",
            history_token_budget=fits if mode == "off" else 100_000,
            rate_limit_per_minute=0,
            log_level="WARNING",
            app_name=f"agentchat-bench-long-{mode}",
        )
        app = create_app(settings)
        fake.reset()
        async with app.router.lifespan_context(app):
            resources = resources_of(app)
            transport = httpx.ASGITransport(app=app)
            auth = {"Authorization": f"Bearer {key}"}
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=60) as client:
                conversation: str | None = None
                for n in range(1, args.turns + 1):
                    filler = " ".join(f"turn{n}-word{i}" for i in range(args.words))
                    # A fact the summary must keep now and then (the fake's summary keeps FACT: lines).
                    fact = f"FACT: the user's fact number {n}.\n" if n % 10 == 1 else ""
                    body: dict[str, Any] = {"message": f"{fact}Message {n}: {filler}"}
                    if conversation is not None:
                        body["conversation_id"] = conversation
                    r = await client.post("/chat", json=body, headers=auth)
                    if r.status_code != 200:
                        raise RuntimeError(f"turn {n}: {r.status_code} {r.text[:200]}")
                    conversation = r.json()["conversation_id"]
                    if resources.compactor is not None:
                        await resources.compactor.idle()  # as a person's pause between turns would allow
        bodies = fake.state.request_bodies()
    finally:
        await drop_database(db_name)
    calls = [b for b in bodies if not is_summary_request(b)]
    summaries = [b for b in bodies if is_summary_request(b)]
    replayed = cache_replay(bodies)
    total, read, written = (sum(r[k] for r in replayed) for k in range(3))
    agent = [r for r, b in zip(replayed, bodies, strict=True) if not is_summary_request(b)]
    agent_input, agent_read = sum(r[0] for r in agent), sum(r[1] for r in agent)
    sent = [sum(len(raw) // 4 for raw, _ in _blocks(b)) for b in calls]
    summary_tokens = sum(sum(len(raw) // 4 for raw, _ in _blocks(b)) for b in summaries)
    return {
        "mode": mode,
        "turns": len(calls),
        "summaries": len(summaries),
        "read_share": read / total if total else 0.0,
        "agent_read_share": agent_read / agent_input if agent_input else 0.0,
        "input_tokens": total,
        "uncached_tokens": total - read,
        "written_tokens": written,
        "sent_mean": statistics.fmean(sent),
        "sent_max": max(sent),
        "sent_last_50": statistics.fmean(sent[-50:]),
        "summary_tokens": summary_tokens,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with FakeLLMServer() as fake:
        results = {}
        for mode in ("on", "off"):
            log(f"compaction {mode}: {args.turns} turns")
            results[mode] = await converse(fake, mode, args)
    return results


def print_report(result: dict[str, Any], args: argparse.Namespace) -> None:
    for mode in ("on", "off"):
        r = result[mode]
        print_table(
            f"long conversation, compaction {mode} ({args.turns} turns, window {args.window})",
            [
                ("prompt-cache read share, all calls", f"{r['read_share']:.1%}"),
                ("prompt-cache read share, the agent's calls", f"{r['agent_read_share']:.1%}"),
                ("tokens sent per turn (mean)", f"{r['sent_mean']:.0f}"),
                ("tokens sent per turn (last 50)", f"{r['sent_last_50']:.0f}"),
                ("tokens sent per turn (max)", f"{r['sent_max']}"),
                ("uncached input tokens, all calls", f"{r['uncached_tokens']}"),
                ("cache writes, all calls", f"{r['written_tokens']}"),
                ("summarizer calls / their input tokens", f"{r['summaries']} / {r['summary_tokens']}"),
            ],
        )


def checks(result: dict[str, Any], args: argparse.Namespace) -> list[Check]:
    on, off = result["on"], result["off"]
    return [
        check("cache read share, compaction on", on["read_share"] * 100, 70, at_most=False, unit="%"),
        check("cache read share, compaction off", off["read_share"] * 100, 0, at_most=False, unit="%"),
        check("max tokens sent, compaction on", on["sent_max"], args.window - 1024, at_most=True, digits=0),
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.long_conversation", description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=150)
    parser.add_argument("--window", type=int, default=16_000, help="the agent's context window (tokens)")
    parser.add_argument("--words", type=int, default=100, help="words per user message (~12 characters each)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run_or_exit(lambda: run(args))
    print_report(result, args)
    print(json.dumps({mode: result[mode] for mode in result}, indent=1))  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
