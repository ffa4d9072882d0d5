"""Prometheus metrics, one registry per app (so tests and replicas never share state)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
# Waits that should be ~0 on a healthy replica: fine buckets at the bottom, saturation at the top.
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._labelled: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        r = self.registry
        self.http_latency = Histogram(
            "agentchat_http_request_duration_seconds",
            "Time to the end of the response (streams: whole stream).",
            ["method", "route", "status"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.turns_in_flight = Gauge("agentchat_turns_in_flight", "Turns running now.", registry=r)
        self.turns = Counter("agentchat_turns_total", "Turns finished, by outcome.", ["status"], registry=r)
        self.ttft = Histogram(
            "agentchat_time_to_first_token_seconds",
            "From the model call to its first text.",
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.upstream_latency = Histogram(
            "agentchat_upstream_request_duration_seconds",
            "One model call, start to finish.",
            ["provider"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.upstream_errors = Counter(
            "agentchat_upstream_errors_total", "Model calls that failed, by error type.", ["type"], registry=r
        )
        self.tokens = Counter("agentchat_tokens_total", "Model tokens, by direction.", ["direction"], registry=r)
        self.lock_conflicts = Counter(
            "agentchat_conversation_busy_total", "Turns refused because another was running.", registry=r
        )
        self.limit_refusals = Counter(
            "agentchat_rate_limit_refusals_total", "Requests refused by a per-key limit.", ["limit"], registry=r
        )
        self.idempotent_replays = Counter(
            "agentchat_idempotent_replays_total", "Answers replayed for an Idempotency-Key.", registry=r
        )
        self.pool_checked_out = Gauge(
            "agentchat_db_pool_checked_out", "Database connections checked out of the pool.", registry=r
        )
        self.pool_checked_out_max = Gauge(
            "agentchat_db_pool_checked_out_max",
            "Most database connections checked out of the pool at once since the process started "
            "(counted at every checkout, so no peak is missed between scrapes).",
            registry=r,
        )

        self.db_pool_wait = Histogram(
            "agentchat_db_pool_wait_seconds",
            "Time a hot-path caller waited for a pooled database connection.",
            registry=r,
            buckets=WAIT_BUCKETS,
        )
        self.db_statements = Counter("agentchat_db_statements_total", "SQL statements executed.", registry=r)
        self.db_commits = Counter(
            "agentchat_db_commits_total", "Explicit COMMITs (single-statement autocommit work excluded).", registry=r
        )
        self.db_checkouts = Counter("agentchat_db_pool_checkouts_total", "Connections checked out.", registry=r)
        self.loop_lag = Histogram(
            "agentchat_event_loop_lag_seconds",
            "How late the event loop ran a timer: the wait every ready task also sees.",
            registry=r,
            buckets=WAIT_BUCKETS,
        )
        self.mirror_writes = Counter(
            "agentchat_run_mirror_writes_total", "Redis round trips that mirrored run events.", registry=r
        )
        self.runs_settled = Counter(
            "agentchat_runs_settled_total", "Runs of dead replicas settled by this one.", registry=r
        )
        self.admission_refusals = Counter(
            "agentchat_admission_refusals_total", "Turns refused early: the event loop was saturated.", registry=r
        )
        self.mcp_calls = Counter("agentchat_mcp_calls_total", "MCP tool calls, by server.", ["server"], registry=r)
        self.mcp_errors = Counter(
            "agentchat_mcp_errors_total",
            "MCP tool calls that did not succeed, by server and kind "
            "(tool_error, timeout, unavailable, invalid_input, protocol_error, bad_result, cancelled).",
            ["server", "type"],
            registry=r,
        )
        self.mcp_latency = Histogram(
            "agentchat_mcp_call_duration_seconds",
            "One MCP tool call, start to finish.",
            ["server"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.mcp_up = Gauge(
            "agentchat_mcp_server_up",
            "1 while connected to the MCP server with its tools on offer.",
            ["server"],
            registry=r,
        )

        # GenAI-style (after OpenTelemetry's gen_ai.client.* metrics), by agent and model; the cost
        # from MODEL_PRICES (app/core/prices.py), counted for models that have a price.
        self.gen_ai_tokens = Counter(
            "agentchat_gen_ai_client_token_usage",
            "Tokens of model calls, by type (input, output, cache_read, cache_creation), agent and model.",
            ["type", "agent", "model"],
            registry=r,
        )
        self.gen_ai_duration = Histogram(
            "agentchat_gen_ai_client_operation_duration_seconds",
            "One model call, start to its last chunk, by agent, model and outcome (error type or ok).",
            ["agent", "model", "outcome"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.gen_ai_first_chunk = Histogram(
            "agentchat_gen_ai_client_time_to_first_chunk_seconds",
            "From a model call to its first chunk of text, by agent and model.",
            ["agent", "model"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.gen_ai_cost = Counter(
            "agentchat_gen_ai_cost_usd",
            "What finished turns cost, by agent and model (MODEL_PRICES).",
            ["agent", "model"],
            registry=r,
        )
        self.tool_duration = Histogram(
            "agentchat_gen_ai_execute_tool_duration_seconds",
            "One tool call, by tool (unknown: a name no tool has).",
            ["tool"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.tool_errors = Counter(
            "agentchat_gen_ai_execute_tool_errors",
            "Tool calls that ended in an error result, by tool and kind "
            "(tool_error, invalid_input, timeout, crashed, unknown_tool).",
            ["tool", "type"],
            registry=r,
        )

    def labelled(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, remembered: prometheus_client's labels() validates and copies
        the values and takes a lock on every call, a few µs each, several times per turn."""
        key = (metric, values)
        child = self._labelled.get(key)
        if child is None:
            child = self._labelled[key] = metric.labels(*values)
        return child  # what labels() returned for this metric: typed Any, not cast (a call per use)

    def watch_pool(self, checked_out: Callable[[], int]) -> None:
        self.pool_checked_out.set_function(checked_out)

    def render(self) -> bytes:
        return generate_latest(self.registry)
