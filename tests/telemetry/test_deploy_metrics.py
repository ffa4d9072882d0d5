"""deploy/'s Grafana dashboard and Prometheus alert rules name only metrics the service's /metrics
exposes, cover what an operator watches, and the rules pass `promtool check rules` (Debian's
prometheus package: `scripts/ensure-apt.sh promtool prometheus`, as scripts/test.sh runs it)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DASHBOARD = DEPLOY / "grafana" / "agentchat.json"
RULES = DEPLOY / "prometheus" / "alerts.yml"
METRIC = re.compile(r"\bagentchat_[a-z0-9_]+\b")
SERIES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count", ""), "counter": ("_total",)}


async def exposed(client: httpx.AsyncClient) -> set[str]:
    """Every series name /metrics exposes, from its # TYPE lines (families without samples too)."""
    r = await client.get("/metrics")
    assert r.status_code == 200, r.text
    names: set[str] = set()
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            base = name.removesuffix("_total") if kind == "counter" else name
            names |= {base + suffix for suffix in SERIES.get(kind, ("",))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def dashboard_exprs() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def rules() -> list[dict[str, Any]]:
    loaded: dict[str, Any] = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


async def test_the_dashboard_and_the_rules_name_only_exposed_metrics(client: httpx.AsyncClient) -> None:
    names = await exposed(client)
    used = {m for expr in dashboard_exprs() for m in METRIC.findall(expr)}
    assert used, "the dashboard queries no agentchat metric"
    assert used <= names, f"the dashboard names metrics /metrics does not expose: {sorted(used - names)}"
    in_rules = {m for rule in rules() for m in METRIC.findall(str(rule["expr"]))}
    assert in_rules <= names, f"alert rules name metrics /metrics does not expose: {sorted(in_rules - names)}"
    # What an operator watches is on the dashboard.
    for metric in (
        "agentchat_turns_total",
        "agentchat_upstream_errors_total",
        "agentchat_time_to_first_token_seconds_bucket",
        "agentchat_gen_ai_client_operation_duration_seconds_bucket",
        "agentchat_gen_ai_client_token_usage_total",
        "agentchat_gen_ai_cost_usd_total",
        "agentchat_event_loop_lag_seconds_bucket",
        "agentchat_db_pool_wait_seconds_bucket",
        "agentchat_turns_in_flight",
        "agentchat_mcp_server_up",
    ):
        assert metric in used, metric


def test_the_alert_rules_cover_saturation_and_failures() -> None:
    by_name = {rule["alert"]: str(rule["expr"]) for rule in rules()}
    wanted = {
        "AgentchatEventLoopLag": "agentchat_event_loop_lag_seconds_bucket",
        "AgentchatDatabasePoolWait": "agentchat_db_pool_wait_seconds_bucket",
        "AgentchatHigh5xxRate": 'status=~"5.."',
        "AgentchatUpstreamErrorRate": "agentchat_upstream_errors_total",
        "AgentchatMcpServerDown": "agentchat_mcp_server_up",
    }
    for alert, needle in wanted.items():
        assert needle in by_name[alert], alert


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/ensure-apt.sh promtool prometheus (scripts/test.sh runs it)")
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout, checked.stdout
