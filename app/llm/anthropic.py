"""Claude through the official SDK: one AsyncAnthropic per process; the SDK calls, we read the body."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NamedTuple, cast

import aiohttp
import anthropic
import httpx2

from app.core.agents_config import PROVIDER_COMPACTION_MIN
from app.core.config import ModelHttpClientName, Settings
from app.core.telemetry import trace_headers
from app.llm.base import (
    Block,
    Completed,
    ContextManagement,
    LLMEvent,
    LLMRequest,
    Sampling,
    TextDelta,
    ToolCall,
    Usage,
)
from app.llm.errors import (
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    retry_after,
)
from app.llm.summary import COMPACTION, PROVIDER_FIGURES, is_compaction, is_summary_block, summary_text

MESSAGES_PATH = "/v1/messages"
FILES_BETA = "files-api-2025-04-14"
FILE_IDS_KEPT = 10_000  # content hashes whose Files API id this client remembers
# Server-side context management (an agent's `compaction: provider`): context editing's beta and
# compaction's, sent together; the API refuses a compaction trigger under 50,000 input tokens.
CONTEXT_BETA = "context-management-2025-06-27"
COMPACT_BETA = "compact-2026-01-12"
CLEAR_TOOL_USES = "clear_tool_uses_20250919"
COMPACT = "compact_20260112"
COMPACT_MIN_TRIGGER = PROVIDER_COMPACTION_MIN
# What `post(stream=True)` asks for; with `cast_to=httpx2.Response` the SDK hands back the response itself.
_RawStream = anthropic.AsyncStream[Any]


@contextmanager
def map_errors() -> Iterator[None]:
    """Translate SDK failures into the service's upstream errors (and their HTTP statuses)."""
    try:
        yield
    except (anthropic.APITimeoutError, httpx2.TimeoutException) as exc:
        raise UpstreamTimeout() from exc
    except anthropic.APIConnectionError as exc:
        raise UpstreamError("Could not reach the model provider.") from exc
    except (httpx2.TransportError, aiohttp.ClientError) as exc:
        # Once streaming, the SDK lets transport errors through unwrapped: a dropped connection.
        # The aiohttp client maps its errors to httpx2's; one it leaves unmapped means the same.
        raise UpstreamError("The connection to the model provider dropped mid-answer.") from exc
    except anthropic.RateLimitError as exc:
        raise UpstreamRateLimited(headers={"Retry-After": retry_after(exc.response.headers, "10")}) from exc
    except anthropic.APIStatusError as exc:
        body_type = _error_type(exc.body)
        if exc.status_code == 529 or body_type == "overloaded_error":
            raise UpstreamOverloaded(headers={"Retry-After": retry_after(exc.response.headers, "5")}) from exc
        if exc.status_code == 429 or body_type == "rate_limit_error":
            raise UpstreamRateLimited(headers={"Retry-After": retry_after(exc.response.headers, "10")}) from exc
        if exc.status_code in (408, 504):
            raise UpstreamTimeout() from exc
        if exc.status_code >= 500 or body_type == "api_error":
            raise UpstreamError() from exc
        raise UpstreamRejected(f"The model provider rejected the request ({exc.status_code}).") from exc


def _error_type(body: object) -> str | None:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("type"), str):
            return str(error["type"])
    return None


def _usage(raw: dict[str, Any]) -> Usage:
    return Usage(
        input_tokens=raw.get("input_tokens") or 0,
        output_tokens=raw.get("output_tokens") or 0,
        cache_read_input_tokens=raw.get("cache_read_input_tokens") or 0,
        cache_creation_input_tokens=raw.get("cache_creation_input_tokens") or 0,
    )


def _prompt(raw: dict[str, Any]) -> int:
    """The input a sampling read, cached or not."""
    return sum(int(raw.get(k) or 0) for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"))


def compact_trigger(context: ContextManagement) -> int:
    return max(context.compact_at, COMPACT_MIN_TRIGGER)


def context_params(context: ContextManagement) -> dict[str, Any]:
    """`context_management` for a call: old tool results cleared first, then the context compacted."""
    clear: dict[str, Any] = {
        "type": CLEAR_TOOL_USES,
        "trigger": {"type": "input_tokens", "value": context.clear_at},
        "keep": {"type": "tool_uses", "value": context.keep_tool_uses},
    }
    if context.clear_at_least:
        clear["clear_at_least"] = {"type": "input_tokens", "value": context.clear_at_least}
    compact = {"type": COMPACT, "trigger": {"type": "input_tokens", "value": compact_trigger(context)}}
    return {"edits": [clear, compact]}


class _Sent(NamedTuple):
    """What a call that manages its context sent: the figures of a compaction in its answer start there."""

    messages: int
    trigger: int


def outgoing(request: LLMRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """The messages as the API takes them, and the betas the call opts in to. A Files API source
    needs its beta. A provider's compaction block goes back as it came (our figures taken off) when
    the call manages its context, the messages from it on (the API drops what precedes it: a later
    step of the turn that compacted need not send it again); otherwise (the agent's compaction
    changed since) as its summary's text, first in the history as ours is."""
    betas = [CONTEXT_BETA, COMPACT_BETA] if request.context is not None else []
    files = compacted = False
    for message in request.messages:
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == COMPACTION:
                compacted = True
            elif isinstance(block.get("source"), dict) and block["source"].get("type") == "file":
                files = True
    if files:
        betas.insert(0, FILES_BETA)
    if not compacted:
        return request.messages, betas
    if request.context is not None:
        return [_figures_off(message) for message in _from_compaction(request.messages)], betas
    return _as_summary_text(request.messages), betas


def _from_compaction(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for index in range(len(messages) - 1, -1, -1):
        content = messages[index].get("content")
        blocks = content if isinstance(content, list) else []
        at = next((j for j in range(len(blocks) - 1, -1, -1) if is_compaction(blocks[j])), None)
        if at is not None:
            return [{**messages[index], "content": blocks[at:]}, *messages[index + 1 :]]
    return messages


def _figures_off(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if not isinstance(content, list) or not any(isinstance(b, dict) and PROVIDER_FIGURES in b for b in content):
        return message
    blocks = [{k: v for k, v in b.items() if k != PROVIDER_FIGURES} if isinstance(b, dict) else b for b in content]
    return {**message, "content": blocks}


def _as_summary_text(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        summaries = [b for b in content if isinstance(b, dict) and b.get("type") == COMPACTION]
        if not summaries:
            out.append(message)
            continue
        rest = [b for b in content if not (isinstance(b, dict) and b.get("type") == COMPACTION)]
        done = [b for b in summaries if is_compaction(b)]
        if done and not out and message.get("role") == "assistant":  # the history starts at the compaction
            out.append({"role": "user", "content": [{"type": "text", "text": summary_text(str(done[-1]["content"]))}]})
        out.append({**message, "content": rest or [{"type": "text", "text": "(compacted)"}]})
    return out


def mark_cache_prefix(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark the end of the history before the new turn, so the next call reads it from the cache;
    and the end of a conversation's summary, which stays the same until its next compaction."""
    if len(messages) < 2 or not messages[-2]["content"]:
        return messages
    if len(messages) > 2 and is_summary_block(messages[0]["content"][0]):
        first = dict(messages[0])
        first["content"] = [{**first["content"][0], "cache_control": {"type": "ephemeral"}}, *first["content"][1:]]
        messages = [first, *messages[1:]]
    prefix = dict(messages[-2])
    blocks = list(prefix["content"])
    blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}
    prefix["content"] = blocks
    return [*messages[:-2], prefix, messages[-1]]


def sampling_params(sampling: Sampling) -> dict[str, Any]:
    """What the Messages API takes of a client's sampling: temperature (its range is 0-1, OpenAI's
    0-2: clamped), else top_p (recent models refuse both at once), and stop sequences (not blank).
    Penalties and seed have no counterpart and are left out."""
    params: dict[str, Any] = {}
    if sampling.temperature is not None:
        params["temperature"] = min(max(sampling.temperature, 0.0), 1.0)
    elif sampling.top_p is not None:
        params["top_p"] = min(max(sampling.top_p, 0.0), 1.0)
    if stops := [s for s in sampling.stop if s.strip()]:
        params["stop_sequences"] = stops
    return params


# Idle pooled connections go after 4 s, before the upstream's keep-alive closes them (uvicorn, Node,
# Apache: 5 s; nginx 75 s; cloud balancers 60 s). A POST sent on a connection just as the server
# closes it fails, and neither aiohttp (it resends idempotent methods only) nor httpcore2 resends
# it: a 502 with LLM_MAX_RETRIES=0, a wasted attempt otherwise. httpx2's default, 5 s (the aiohttp
# client's connector takes it as its keepalive_timeout), is uvicorn's own deadline; the spare second
# covers our idle clock starting after the server's (the answer's last bytes in flight, a busy loop).
# nginx in front of us does the same (deploy/nginx: 4 s). Test: tests/llm/test_keepalive.py.
KEEPALIVE_EXPIRY = 4.0


def _http_client(max_connections: int, kind: ModelHttpClientName = "aiohttp") -> httpx2.AsyncClient:
    """One pool for every stream in flight (the SDK's default caps it at 1,000). The SDK's aiohttp
    client by default: its httpx2 default costs a fifth more CPU per turn and a third more per
    streamed delta (`python -m bench.transport`). Both follow HTTP(S)_PROXY and expire idle
    connections after KEEPALIVE_EXPIRY."""
    limits = httpx2.Limits(
        max_connections=max_connections, max_keepalive_connections=100, keepalive_expiry=KEEPALIVE_EXPIRY
    )
    if kind == "httpx":
        return anthropic.DefaultAsyncHttpxClient(limits=limits)
    return anthropic.DefaultAioHttpClient(limits=limits)


def _sdk_spans() -> anthropic.OpenTelemetryClientOption:
    """The SDK's OpenTelemetry spans: the SDK's defaults where the environment sets up OpenTelemetry
    (OTEL_*, ANTHROPIC_OPEN_TELEMETRY*); otherwise off, since building a span's attributes costs
    CPU on every call even when nothing records it."""
    if any(name.startswith(("OTEL_", "ANTHROPIC_OPEN_TELEMETRY")) for name in os.environ):
        return None
    return {"traces": False, "propagation": False}


class AnthropicModel:
    provider = "anthropic"

    def __init__(self, settings: Settings) -> None:
        assert settings.anthropic_api_key is not None
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.anthropic_api_key.get_secret_value(),
            base_url=settings.anthropic_base_url,
            max_retries=settings.llm_max_retries,
            timeout=anthropic.Timeout(settings.llm_read_timeout, connect=settings.llm_connect_timeout),
            http_client=_http_client(settings.llm_max_connections, settings.llm_http_client),
            open_telemetry=_sdk_spans(),
        )
        self._file_ids: dict[str, str] = {}  # a file's content hash -> its Files API id, for this key
        # The Messages API's URL, whole: the SDK takes an absolute URL as it is, where a path is
        # parsed and joined to the base URL again on every call (two URL parses and a copy).
        self._messages_url = str(self._client.base_url).rstrip("/") + MESSAGES_PATH

    async def aclose(self) -> None:
        await self._client.close()

    async def file_source(
        self, key: str, filename: str, media_type: str, data: Callable[[], Awaitable[bytes | None]]
    ) -> Block | None:
        """An attached file as a Files API source, uploaded the first time this client sees its bytes."""
        file_id = self._file_ids.get(key)
        if file_id is None:
            raw = await data()
            if raw is None:
                return None
            with map_errors():
                uploaded = await self._client.beta.files.upload(file=(filename, raw, media_type), betas=[FILES_BETA])
            if len(self._file_ids) >= FILE_IDS_KEPT:
                self._file_ids.pop(next(iter(self._file_ids)))  # the oldest: it is uploaded again if needed
            file_id = self._file_ids[key] = uploaded.id
        return {"type": "file", "file_id": file_id}

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[LLMEvent]]:
        messages, betas = outgoing(request)
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": mark_cache_prefix(messages),
        }
        if request.system:
            # The system prompt (and tools) are the stable prefix: cache them.
            kwargs["system"] = [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}]
        if request.tools:
            kwargs["tools"] = request.tools
            if request.tool_choice:
                kwargs["tool_choice"] = request.tool_choice
        kwargs.update(sampling_params(request.sampling))
        sent = None
        if request.context is not None:  # the provider edits and compacts the context (compaction: provider)
            kwargs["context_management"] = context_params(request.context)
            sent = _Sent(len(messages), compact_trigger(request.context))
        # The SDK makes the call (auth, headers, retries before the first byte, status errors)
        # through its documented way in for any request (`post`, `cast_to=httpx2.Response`), with
        # the body encoded here: `messages.create` would walk and copy the whole body (history and
        # tool schemas) on each call only to send the same JSON. We read the body ourselves: the
        # SDK's typed models and accumulating stream helper cost more per event than the rest of a
        # relayed delta together, and we keep only a few fields.
        if request.incremental:
            kwargs["stream"] = True
        body = _encode(kwargs).encode()
        # The trace goes on to the provider (traceparent; nothing when traces are off); a Files API
        # upload named, the context managed server-side: the call opts in to the betas.
        headers = trace_headers()
        if betas:
            headers = {**headers, "anthropic-beta": ",".join(betas)}
        # Every option given, the client's own where we have nothing to add: the SDK deep-copies
        # each default it fills in for one left out (`FinalRequestOptions.construct`), per call.
        options: anthropic.RequestOptions = {
            "headers": headers,
            "max_retries": self._client.max_retries,
            "timeout": self._client.timeout,
        }
        with map_errors():
            if not request.incremental:
                response = await self._client.post(
                    self._messages_url, content=body, cast_to=httpx2.Response, options=options
                )
                yield _whole(json.loads(response.content), sent)
                return
            # stream=True: the response comes back unread, its body ours to iterate and close.
            streamed = await self._client.post(
                self._messages_url,
                content=body,
                cast_to=httpx2.Response,
                stream=True,
                stream_cls=_RawStream,
                options=options,
            )
            response = cast(httpx2.Response, streamed)
            try:
                yield _events(response.aiter_raw() if _identity(response) else response.aiter_bytes(), sent)
            finally:
                await response.aclose()


def _identity(response: httpx2.Response) -> bool:
    """No content-encoding: the raw chunks are the body, without httpx2's decoder and re-chunking per read."""
    return response.headers.get("content-encoding", "identity").strip().lower() == "identity"


async def _whole(message: dict[str, Any], sent: _Sent | None = None) -> AsyncIterator[LLMEvent]:
    content = [_block(block) for block in message.get("content") or []]
    for block in content:
        if block["type"] == "text" and block["text"]:
            yield TextDelta(block["text"])
        elif block["type"] == "tool_use":
            yield ToolCall(id=block["id"], name=block["name"], input=block["input"])
    stop_reason = message.get("stop_reason") or "end_turn"
    yield _completed(stop_reason, message.get("usage") or {}, content, message.get("context_management"), sent)


def _completed(
    stop_reason: str, raw: dict[str, Any], content: list[Block], context: Any, sent: _Sent | None
) -> Completed:
    """The end of an answer. A compaction's own sampling is billed but left out of the top-level
    usage (it is an `iterations` entry): it is added here, so the quota and GET /usage count it. A
    compaction block gets our figures, the `context` event's: the messages it folded (all the call
    sent: the provider drops what precedes the block), the context before (the compaction's input,
    at least its trigger, plus what context editing cleared first) and after (the input of the
    first sampling that read the compacted context)."""
    usage = _usage(raw)
    iterations = [i for i in raw.get("iterations") or () if isinstance(i, dict)]
    compactions = [n for n, i in enumerate(iterations) if i.get("type") == "compaction"]
    for n in compactions:
        usage.add(_usage(iterations[n]))
    block = next((b for b in reversed(content) if is_compaction(b)), None)
    if block is not None and sent is not None:
        edits = context.get("applied_edits") if isinstance(context, dict) else None
        edits = [e for e in edits or () if isinstance(e, dict)]
        after = compactions[-1] + 1 if compactions else 0
        read = next((i for i in iterations[after:] if i.get("type") == "message"), raw)
        block[PROVIDER_FIGURES] = {
            "messages_summarized": sent.messages,
            "tokens_before": max(sum(_prompt(iterations[n]) for n in compactions), sent.trigger)
            + sum(int(e.get("cleared_input_tokens") or 0) for e in edits),
            "tokens_after": _prompt(read),
            "cleared_tool_uses": sum(int(e.get("cleared_tool_uses") or 0) for e in edits),
        }
    return Completed(stop_reason=stop_reason, usage=usage, content=content)


def _block(raw: dict[str, Any]) -> Block:
    """A content block as the history stores it (the API's shape, without nulls)."""
    if raw.get("type") == "tool_use":
        return {"type": "tool_use", "id": raw["id"], "name": raw["name"], "input": dict(raw.get("input") or {})}
    return {k: v for k, v in raw.items() if v is not None}


async def _events(body: AsyncIterator[bytes], sent: _Sent | None = None) -> AsyncIterator[LLMEvent]:
    """The Messages API's event stream, read directly: one JSON decode per event, nothing else.

    One async generator from the body's chunks to our events, the SSE split a plain call: at real
    speed each event comes on its own read, so every layer here is paid once per delta (issue #28).
    """
    blocks: dict[int, Block] = {}
    texts: dict[int, list[str]] = {}  # a text block's deltas, joined once at its end (not a copy per delta)
    partial_json: dict[int, list[str]] = {}
    usage: dict[str, Any] = {}
    context: Any = None  # what server-side context management did (in the last message_delta)
    stop_reason = "end_turn"
    sse = _SSEData()
    async for chunk in body:
        for data in sse.feed(chunk):
            event = _decode(data.decode())
            kind = event.get("type")
            if kind == "content_block_delta":
                delta, index = event["delta"], event["index"]
                if delta["type"] == "text_delta":
                    if text := delta["text"]:
                        texts[index].append(text)
                        yield TextDelta(text)
                elif delta["type"] == "input_json_delta":
                    partial_json.setdefault(index, []).append(delta["partial_json"])
                elif delta["type"] == "compaction_delta":  # the whole summary, in one delta
                    blocks[index].update({k: v for k, v in delta.items() if k != "type" and v is not None})
            elif kind == "content_block_start":
                block = blocks[event["index"]] = _block(event["content_block"])
                if block["type"] == "text":
                    texts[event["index"]] = []
            elif kind == "content_block_stop":
                block = blocks[event["index"]]
                _join_text(block, texts.pop(event["index"], None))
                if block["type"] == "tool_use":
                    raw_input = "".join(partial_json.pop(event["index"], []))
                    block["input"] = json.loads(raw_input) if raw_input else block["input"]
                    yield ToolCall(id=block["id"], name=block["name"], input=block["input"])
            elif kind == "message_start":
                usage.update(event["message"].get("usage") or {})
            elif kind == "message_delta":
                stop_reason = event["delta"].get("stop_reason") or stop_reason
                usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
                context = event.get("context_management") or context
            elif kind == "message_stop":
                for index, parts in texts.items():  # text blocks the stream did not close
                    _join_text(blocks[index], parts)
                content = [blocks[i] for i in sorted(blocks)]
                yield _completed(stop_reason, usage, content, context, sent)
                return
            elif kind == "error":
                raise _stream_error(event.get("error"))
    raise UpstreamError("The model's answer ended before it was complete.")


# json.dumps with non-default arguments builds a new encoder per call: one encoder, built once.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode  # json.loads less its encoding sniffing: SSE is UTF-8


def _join_text(block: Block, parts: list[str] | None) -> None:
    if parts:
        block["text"] = block.get("text", "") + "".join(parts)


class _SSEData:
    """The `data` of each Server-Sent Event, fed the body's chunks (events end with a blank line;
    other fields are unused)."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self.buffer + chunk if self.buffer else chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        found: list[bytes] = []
        while (end := buffer.find(b"\n\n")) >= 0:
            block, buffer = buffer[:end], buffer[end + 2 :]
            lines = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
            if lines:
                found.append(lines[0] if len(lines) == 1 else b"\n".join(lines))
        self.buffer = buffer
        return found


def _stream_error(error: object) -> UpstreamError:
    """An `error` event after the stream began (the status was already 200)."""
    kind = _error_type({"error": error})
    if kind == "overloaded_error":
        return UpstreamOverloaded(headers={"Retry-After": "5"})
    if kind == "rate_limit_error":
        return UpstreamRateLimited(headers={"Retry-After": "10"})
    return UpstreamError("The model provider failed mid-answer.")
