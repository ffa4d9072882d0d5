"""OpenTelemetry traces, by the GenAI semantic conventions; off, and free, unless OTEL_* sets them up.

Configured only by OpenTelemetry's own variables: an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or `OTEL_TRACES_EXPORTER=otlp|console`) turns tracing on;
`OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` keeps it off. The SDK reads the rest itself
(`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`,
`OTEL_EXPORTER_OTLP_*`). When it is off nothing of the SDK is imported or built, no middleware is
added, and each hook below is one global read that finds None.

Spans (create_app and the lifespan set them up): the HTTP server span (the ASGI instrumentation,
which continues an incoming `traceparent`); `invoke_agent {agent}` per turn and per continuation
after an approval (app/turns/turn.py); `chat {model}` per model call and `execute_tool {tool}` per
tool call (app/agent/loop.py); asyncpg (or SQLAlchemy on SQLite) and Redis spans from their
instrumentation packages. The model and MCP requests carry the trace onward (`trace_headers`; the MCP
SDK injects `traceparent` into each request's `_meta` itself). Message content is recorded only with
`OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true`. Never a key: the owner is its id.

The provider belongs to the app that built it (not OpenTelemetry's global one), so tests and
several apps in one process never share one; the instrumentations are installed for the lifespan.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from structlog.types import EventDict

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine

CAPTURE_CONTENT = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SCOPE = "agentchat"

# gen_ai.* attribute names (semantic conventions for generative AI, "Development" status).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHE_READ_TOKENS = "gen_ai.usage.cache_read.input_tokens"
CACHE_CREATION_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
CONVERSATION_ID = "gen_ai.conversation.id"
AGENT_NAME = "gen_ai.agent.name"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_RESULT = "gen_ai.tool.call.result"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
ERROR_TYPE = "error.type"
REQUEST_ID = "agentchat.request_id"
OWNER_ID = "agentchat.owner_id"

_NO_SPAN: AbstractContextManager[None] = nullcontext()


def configured(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces: an exporter named or an OTLP endpoint set."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class Telemetry:
    """An app's tracer provider and what it records; built only when `configured()`."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter

        exporter: SpanExporter
        if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "console":
            from opentelemetry.sdk.trace.export import ConsoleSpanExporter

            exporter, processor = ConsoleSpanExporter(), SimpleSpanProcessor
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter, processor = OTLPSpanExporter(), BatchSpanProcessor  # type: ignore[assignment]
        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the provider reads
        # OTEL_TRACES_SAMPLER; BatchSpanProcessor reads OTEL_BSP_*.
        resource = Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME") or "agentchat"})
        self.provider: TracerProvider = TracerProvider(resource=resource)
        self.provider.add_span_processor(processor(exporter))
        self.tracer: Tracer = self.provider.get_tracer(SCOPE)
        self.capture_content = environ.get(CAPTURE_CONTENT, "").strip().lower() == "true"

    @contextmanager
    def instrumented(self, engine: AsyncEngine, redis: Redis | None) -> Iterator[None]:
        """The libraries' own spans, for the lifespan: asyncpg (Postgres) or SQLAlchemy (SQLite), Redis."""
        with ExitStack() as stack:
            if engine.dialect.name == "postgresql":
                from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

                pg = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
                pg.instrument(tracer_provider=self.provider)
                stack.callback(pg.uninstrument)
            else:
                from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

                sa = SQLAlchemyInstrumentor()
                # Its declared range stops below SQLAlchemy 2.1, which it instruments all the same
                # (tests/telemetry: the statements of a turn on SQLite are spans of its trace).
                sa.instrument(engine=engine.sync_engine, tracer_provider=self.provider, skip_dep_check=True)
                stack.callback(sa.uninstrument)
            if redis is not None:
                from opentelemetry.instrumentation.redis import RedisInstrumentor

                rd = RedisInstrumentor()
                rd.instrument(tracer_provider=self.provider)
                stack.callback(rd.uninstrument)
            yield

    def asgi(self, app: Any) -> Any:
        """The HTTP server span around `app`: continues an incoming traceparent."""
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        # No span per ASGI message: a stream sends one per delta, which would cost more than the turn's own spans.
        return OpenTelemetryMiddleware(
            app,
            tracer_provider=self.provider,
            excluded_urls="healthz,readyz,metrics",
            exclude_spans=["receive", "send"],
        )

    def shutdown(self) -> None:
        """Export what is buffered, then stop."""
        self.provider.force_flush()
        self.provider.shutdown()


# The app whose lifespan is running (set by `activate`): what the hot path's hooks read. None: off.
_active: Telemetry | None = None


def active() -> Telemetry | None:
    return _active


@contextmanager
def activate(telemetry: Telemetry | None) -> Iterator[None]:
    global _active
    previous, _active = _active, telemetry
    try:
        yield
    finally:
        _active = previous


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def span(name: str, attributes: dict[str, Any], *, client: bool = False) -> AbstractContextManager[Span | None]:
    """A span made current for the block; a shared no-op when tracing is off."""
    t = _active
    if t is None:
        return _NO_SPAN
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    return t.tracer.start_as_current_span(name, kind=kind, attributes=attributes)


def invoke_agent(
    *, agent: str, provider: str, model: str, conversation_id: object, owner_id: object, request_id: str | None
) -> AbstractContextManager[Span | None]:
    if _active is None:
        return _NO_SPAN
    attributes = {
        OPERATION: "invoke_agent",
        PROVIDER: provider,
        AGENT_NAME: agent,
        REQUEST_MODEL: model,
        CONVERSATION_ID: str(conversation_id),
        OWNER_ID: str(owner_id),
    }
    if request_id:
        attributes[REQUEST_ID] = request_id
    return span(f"invoke_agent {agent}", attributes)


def chat(
    *,
    provider: str,
    model: str,
    agent: str | None,
    conversation_id: object,
    system: str | None,
    messages: list[dict[str, Any]],
) -> AbstractContextManager[Span | None]:
    t = _active
    if t is None:
        return _NO_SPAN
    attributes: dict[str, Any] = {OPERATION: "chat", PROVIDER: provider, REQUEST_MODEL: model}
    if agent:
        attributes[AGENT_NAME] = agent
    if conversation_id is not None:
        attributes[CONVERSATION_ID] = str(conversation_id)
    if t.capture_content:
        attributes[INPUT_MESSAGES] = _json(messages)
        if system:
            attributes[SYSTEM_INSTRUCTIONS] = _json([{"type": "text", "content": system}])
    return span(f"chat {model}", attributes, client=True)


def chat_completed(span: Span | None, *, model: str, stop_reason: str, usage: Any, content: list[Any]) -> None:
    """The response's attributes on a `chat` span (None: tracing is off)."""
    if span is None:
        return
    span.set_attributes(
        {
            RESPONSE_MODEL: model,
            FINISH_REASONS: [stop_reason],
            INPUT_TOKENS: usage.input_tokens,
            OUTPUT_TOKENS: usage.output_tokens,
            CACHE_READ_TOKENS: usage.cache_read_input_tokens,
            CACHE_CREATION_TOKENS: usage.cache_creation_input_tokens,
        }
    )
    t = _active
    if t is not None and t.capture_content:
        span.set_attribute(OUTPUT_MESSAGES, _json([{"role": "assistant", "content": content}]))


def execute_tool(
    *, name: str, call_id: str, arguments: object, agent: str | None, conversation_id: object, mcp: bool
) -> AbstractContextManager[Span | None]:
    t = _active
    if t is None:
        return _NO_SPAN
    attributes: dict[str, Any] = {
        OPERATION: "execute_tool",
        TOOL_NAME: name,
        TOOL_CALL_ID: call_id,
        TOOL_TYPE: "extension" if mcp else "function",
        CONVERSATION_ID: str(conversation_id),
    }
    if agent:
        attributes[AGENT_NAME] = agent
    if t.capture_content:
        attributes[TOOL_ARGUMENTS] = _json(arguments)
    return span(f"execute_tool {name}", attributes)


def tool_finished(span: Span | None, *, is_error: bool, error_type: str | None, result: str) -> None:
    if span is None:
        return
    if is_error:
        from opentelemetry.trace import StatusCode

        span.set_attribute(ERROR_TYPE, error_type or "tool_error")
        span.set_status(StatusCode.ERROR)
    t = _active
    if t is not None and t.capture_content:
        span.set_attribute(TOOL_RESULT, result)


def turn_finished(span: Span | None, *, status: str, stop_reason: str | None, usage: Any, error: str | None) -> None:
    if span is None:
        return
    span.set_attributes(
        {
            "agentchat.turn.status": status,
            FINISH_REASONS: [stop_reason or status],
            INPUT_TOKENS: usage.input_tokens,
            OUTPUT_TOKENS: usage.output_tokens,
            CACHE_READ_TOKENS: usage.cache_read_input_tokens,
            CACHE_CREATION_TOKENS: usage.cache_creation_input_tokens,
        }
    )
    if error is not None:
        from opentelemetry.trace import StatusCode

        span.set_attribute(ERROR_TYPE, error)
        span.set_status(StatusCode.ERROR)


def mark_request(request_id: str) -> None:
    """Our request id on the current (HTTP server) span."""
    if _active is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attribute(REQUEST_ID, request_id)


def link_current_span(traceparent: str | None, why: str) -> None:
    """Link the current span to another trace (a run started elsewhere, `why` says what it is)."""
    if _active is None or not traceparent:
        return
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    linked = trace.get_current_span(TraceContextTextMapPropagator().extract({"traceparent": traceparent}))
    if linked.get_span_context().is_valid:
        trace.get_current_span().add_link(linked.get_span_context(), {"agentchat.link": why})


def current_traceparent() -> str | None:
    """The current span's W3C traceparent (None when tracing is off), to link to it later."""
    return trace_headers().get("traceparent") if _active is not None else None


def trace_headers() -> dict[str, str]:
    """The current trace context as headers (`traceparent`, `tracestate`) for an outgoing request;
    empty when tracing is off."""
    if _active is None:
        return {}
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def add_trace_ids(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the current span's trace_id and span_id on every line logged inside one."""
    if _active is None:
        return event_dict
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict["trace_id"] = format(context.trace_id, "032x")
        event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict
