"""Prometheus metrics, one registry per app (so tests and replicas never share state)."""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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

    def watch_pool(self, checked_out: Callable[[], int]) -> None:
        self.pool_checked_out.set_function(checked_out)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI: times every HTTP request, labelled by its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.http_latency.labels(scope["method"], template, str(status)).observe(
                time.perf_counter() - started
            )
