"""The gen_ai-style Prometheus metrics: tokens by type, agent and model; model-call duration by
outcome; time to the first chunk; tool-call duration and errors by tool (a made-up tool name is
`unknown`, never a label value of its own); the cost of priced models."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import ConfigError, Settings, load_settings
from app.core.prices import Tokens, parse_prices
from tests.fixtures.app import make_key, running_app


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_model_and_tool_calls_are_measured_by_agent_model_and_tool(settings: Settings) -> None:
    priced = settings.model_copy(update={"model_prices": parse_prices({"claude-*": {"input": 1, "output": 2}})})
    async with running_app(priced) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        ask = '[[tool:calculator {"expression": "1/0"}]] [[tool:no_such_tool {}]] go'
        r = await client.post("/chat", json={"message": ask, "stream": True}, headers=auth)
        assert r.status_code == 200, r.text
        metrics = samples((await client.get("/metrics")).text)

    def value(name: str, **labels: str) -> float:
        return metrics.get((name, frozenset(labels.items())), 0.0)

    who = {"agent": "agentchat", "model": "claude-test"}
    assert value("agentchat_gen_ai_client_token_usage_total", type="input", **who) > 0
    assert value("agentchat_gen_ai_client_token_usage_total", type="output", **who) > 0
    assert value("agentchat_gen_ai_client_operation_duration_seconds_count", outcome="ok", **who) == 2
    assert value("agentchat_gen_ai_client_time_to_first_chunk_seconds_count", **who) == 2
    assert value("agentchat_gen_ai_execute_tool_duration_seconds_count", tool="calculator") == 1
    assert value("agentchat_gen_ai_execute_tool_duration_seconds_count", tool="unknown") == 1
    assert value("agentchat_gen_ai_execute_tool_errors_total", tool="calculator", type="tool_error") == 1
    assert value("agentchat_gen_ai_execute_tool_errors_total", tool="unknown", type="unknown_tool") == 1
    assert not [key for key in metrics if ("tool", "no_such_tool") in key[1]]
    assert value("agentchat_gen_ai_cost_usd_total", **who) > 0


def test_a_bad_price_table_stops_start_up_naming_the_model(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_PRICES", '{"claude-x": {"input": 3, "output": "lots"}}')
    with pytest.raises(ConfigError) as stopped:
        load_settings()
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "MODEL_PRICES: model 'claude-x': output:" in err


def test_prices_by_name_and_pattern() -> None:
    table = parse_prices({"exact": {"input": 1, "output": 2}, "fam-*": {"input": 10, "output": 20, "cache_read": 1}})
    assert table.cost("exact", Tokens(1_000_000, 500_000)) == 2.0
    # cache_creation defaults to the input price; an unpriced model costs None, never a guess.
    assert table.cost("fam-1", Tokens(0, 0, 1_000_000, 1_000_000)) == 11.0
    assert table.cost("other", Tokens(1, 1)) is None
