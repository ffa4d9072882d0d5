"""/metrics speaks Prometheus and counts what operators watch."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_count_turns_tokens_errors_and_latency(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    assert (await client.post("/chat", json={"message": "hi"}, headers=auth)).status_code == 200
    assert (await client.post("/chat", json={"message": "x [[status:529]]"}, headers=auth)).status_code == 503
    r = await client.get("/metrics")  # no key needed, like the health checks
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    got = samples(r.text)
    assert got[("agentchat_turns_total", (("status", "complete"),))] == 1
    assert got[("agentchat_turns_total", (("status", "error"),))] == 1
    assert got[("agentchat_upstream_errors_total", (("type", "upstream_overloaded"),))] == 1
    assert got[("agentchat_tokens_total", (("direction", "out"),))] > 0
    assert got[("agentchat_turns_in_flight", ())] == 0
    assert got[("agentchat_db_pool_checked_out", ())] == 0
    assert got[("agentchat_time_to_first_token_seconds_count", ())] == 1
    key = ("agentchat_http_request_duration_seconds_count", (("method", "POST"), ("route", "/chat"), ("status", "200")))
    assert got[key] == 1
    # Paths are labelled by their template, so ids never explode the label space.
    await client.get("/conversations/00000000-0000-0000-0000-000000000000", headers=auth)
    got = samples((await client.get("/metrics")).text)
    templated = ("method", "GET"), ("route", "/conversations/{conversation_id}"), ("status", "404")
    assert got[("agentchat_http_request_duration_seconds_count", templated)] == 1
