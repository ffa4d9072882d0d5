"""Any OpenAI-compatible `/chat/completions` server (Ollama, vLLM, llama.cpp, OpenAI) over raw httpx.

The rest of the service speaks Anthropic-shaped histories and blocks; this module translates at the
edge, in both directions.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog

from app.core.config import Settings
from app.llm.base import Block, Completed, LLMEvent, LLMRequest, TextDelta, ToolCall, Usage
from app.llm.errors import (
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    retry_after,
)

log = structlog.get_logger(__name__)

_BACKOFF_BASE = 0.5
_BACKOFF_CAP = 8.0

# Failures where the request may never have been processed, so sending it again is safe.
_RETRYABLE_TRANSPORT = (httpx.NetworkError, httpx.RemoteProtocolError, httpx.ConnectTimeout)

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


# --- errors ---------------------------------------------------------------------------------------


class _StatusFailure(Exception):
    """A non-2xx answer, carried out of the `async with` so the response is closed before a retry."""

    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        super().__init__(f"upstream answered {status}")
        self.status = status
        self.retry_after = _retry_delay(headers)
        # OpenAI's servers say explicitly whether a retry can help; follow them like their SDKs do.
        hint = headers.get("x-should-retry", "").lower()
        self.retryable = hint == "true" if hint in ("true", "false") else status == 429 or status >= 500
        self.error = _status_error(status, headers)


def _retry_delay(headers: Mapping[str, str]) -> float | None:
    """The wait the server asked for, in seconds. Only delta forms: HTTP-dates are rare here."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value and value.replace(".", "", 1).isdigit():
            return float(value) * scale
    return None


def _status_error(status: int, headers: Mapping[str, str]) -> UpstreamError:
    """The same status mapping as the Anthropic provider."""
    if status == 429:
        return UpstreamRateLimited(headers={"Retry-After": retry_after(headers, "10")})
    if status in (503, 529):
        return UpstreamOverloaded(headers={"Retry-After": retry_after(headers, "5")})
    if status in (408, 504):
        return UpstreamTimeout()
    if status >= 500:
        return UpstreamError()
    if status >= 400:
        return UpstreamRejected(f"The model provider rejected the request ({status}).")
    return UpstreamError(f"The model provider answered with an unexpected status ({status}).")


def _transport_error(exc: httpx.HTTPError) -> UpstreamError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout()
    if isinstance(exc, httpx.TransportError):
        return UpstreamError("Could not reach the model provider.")
    return UpstreamError()


def _backoff(attempt: int, retry_after: float | None) -> float | None:
    """Seconds to wait before retry number `attempt + 1`, or None when not worth waiting for."""
    delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0**attempt) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        if retry_after > _BACKOFF_CAP:
            return None  # longer than we hold a turn open: let our client come back later
        delay = max(delay, retry_after)
    return delay


# --- request translation (Anthropic shape -> OpenAI shape) ----------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, dict) and b.get("type") == "text")
    return ""


def _translate_message(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    role, content = message["role"], message["content"]
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = [b for b in content if isinstance(b, dict)]
    text = _text_of(blocks)
    if role == "assistant":
        out: dict[str, Any] = {"role": "assistant", "content": text}
        calls = [
            {
                "id": b["id"],
                "type": "function",
                "function": {"name": b["name"], "arguments": json.dumps(b.get("input") or {})},
            }
            for b in blocks
            if b.get("type") == "tool_use"
        ]
        if calls:
            out["tool_calls"] = calls
        return [out]
    # Tool results must directly follow the assistant turn that asked for them, so they go first.
    messages: list[dict[str, Any]] = []
    for b in blocks:
        if b.get("type") == "tool_result":
            result = _text_of(b.get("content", ""))
            if b.get("is_error"):
                result = f"ERROR: {result}"
            messages.append({"role": "tool", "tool_call_id": b["tool_use_id"], "content": result})
    if text or not messages:
        messages.append({"role": role, "content": text})
    return messages


def build_payload(request: LLMRequest) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    for message in request.messages:
        messages.extend(_translate_message(message))
    payload: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        payload["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool["name"],
                    "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
                },
            }
            for tool in request.tools
        ]
        if request.tool_choice:
            payload["tool_choice"] = _tool_choice(request.tool_choice)
    return payload


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"any": "required", "none": "none"}.get(str(kind), "auto")


# --- response translation (OpenAI chunks -> LLMEvents) --------------------------------------------


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def finish(self, index: int) -> ToolCall:
        raw = "".join(self.arguments)
        tool_input: dict[str, Any]
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except json.JSONDecodeError:
            parsed = None
        # Keep unparseable arguments visible to the tool (and the log) instead of dropping them.
        tool_input = parsed if isinstance(parsed, dict) else {"_raw": raw}
        return ToolCall(id=self.id or f"call_{index}", name=self.name, input=tool_input)


@dataclass(slots=True)
class _Accumulator:
    """Folds streamed chunks into events and, at the end, one Anthropic-shaped Completed."""

    text: list[str] = field(default_factory=list)
    partial: dict[int, _PartialCall] = field(default_factory=dict)
    calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)

    def feed(self, chunk: Mapping[str, Any]) -> list[LLMEvent]:
        if chunk.get("error") is not None:
            raise UpstreamError("The model provider failed mid-stream.")
        if isinstance(chunk.get("usage"), dict):
            self.usage = _usage(chunk["usage"])
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return []
        choice = choices[0]
        events: list[LLMEvent] = []
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str) and content:
            self.text.append(content)
            events.append(TextDelta(content))
        for position, piece in enumerate(delta.get("tool_calls") or []):
            self._add_tool_piece(position, piece)
        if choice.get("finish_reason"):
            self.finish_reason = str(choice["finish_reason"])
            events.extend(self.flush_calls())
        return events

    def _add_tool_piece(self, position: int, piece: Mapping[str, Any]) -> None:
        index = piece.get("index", position)
        call = self.partial.setdefault(index if isinstance(index, int) else position, _PartialCall())
        call.id = piece.get("id") or call.id
        function = piece.get("function") or {}
        call.name = function.get("name") or call.name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.arguments.append(arguments)
        elif isinstance(arguments, dict):  # some servers send the object itself
            call.arguments.append(json.dumps(arguments))

    def flush_calls(self) -> list[ToolCall]:
        done = [self.partial[i].finish(i) for i in sorted(self.partial)]
        self.partial.clear()
        self.calls.extend(done)
        return list(done)

    def completed(self) -> Completed:
        content: list[Block] = []
        if self.text:
            content.append({"type": "text", "text": "".join(self.text)})
        content.extend({"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in self.calls)
        reason = self.finish_reason or "stop"
        # Some servers (older Ollama) say "stop" even when they called tools; the agent keys on tool_use.
        stop_reason = "tool_use" if self.calls and reason == "stop" else _STOP_REASONS.get(reason, reason)
        return Completed(stop_reason=stop_reason, usage=self.usage, content=content)


def _usage(raw: Mapping[str, Any]) -> Usage:
    details = raw.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    cached = cached if isinstance(cached, int) else 0
    prompt = raw.get("prompt_tokens") or 0
    # OpenAI counts cached tokens inside prompt_tokens; Anthropic's input_tokens excludes them.
    return Usage(
        input_tokens=max(prompt - cached, 0),
        output_tokens=raw.get("completion_tokens") or 0,
        cache_read_input_tokens=cached,
    )


class _Primed:
    """The call's events, starting with the one `stream()` already waited for."""

    def __init__(self, first: LLMEvent, rest: AsyncIterator[LLMEvent]) -> None:
        self._first: LLMEvent | None = first
        self._rest = rest

    def __aiter__(self) -> _Primed:
        return self

    async def __anext__(self) -> LLMEvent:
        if self._first is not None:
            event, self._first = self._first, None
            return event
        return await anext(self._rest)


# --- the provider ---------------------------------------------------------------------------------


class OpenAICompatModel:
    provider = "openai"

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self._http = http  # the app's shared client: its lifespan owns it, not us
        self._url = settings.openai_base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Accept": "text/event-stream"}
        if settings.openai_api_key is not None:
            self._headers["Authorization"] = f"Bearer {settings.openai_api_key.get_secret_value()}"
        self._timeout = httpx.Timeout(settings.llm_read_timeout, connect=settings.llm_connect_timeout)
        self._max_retries = settings.llm_max_retries

    async def aclose(self) -> None:
        return None

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[LLMEvent]]:
        events = self._call(build_payload(request))
        try:
            # Wait for the first event here so failures, and the retries allowed before any output,
            # surface on entering the block, as with the Anthropic SDK.
            first = await anext(events)
            yield _Primed(first, events)
        finally:
            await events.aclose()  # closes the upstream response wherever the generator stopped

    async def _call(self, payload: dict[str, Any]) -> AsyncGenerator[LLMEvent, None]:
        attempt = 0
        while True:
            produced = False
            error: UpstreamError
            cause: Exception
            retry_after: float | None = None
            try:
                async with self._http.stream(
                    "POST", self._url, json=payload, headers=self._headers, timeout=self._timeout
                ) as response:
                    if not response.is_success:
                        await response.aread()  # small; lets the connection be reused
                        raise _StatusFailure(response.status_code, response.headers)
                    async with aclosing(self._events(response)) as events:
                        async for event in events:
                            produced = True
                            yield event
                return
            except _StatusFailure as failure:
                error, cause, retryable, retry_after = failure.error, failure, failure.retryable, failure.retry_after
            except httpx.HTTPError as exc:
                error, cause, retryable = _transport_error(exc), exc, isinstance(exc, _RETRYABLE_TRANSPORT)
            # Never retry once output reached the caller: it would be produced twice.
            delay = _backoff(attempt, retry_after) if retryable and not produced else None
            if delay is None or attempt >= self._max_retries:
                raise error from cause
            attempt += 1
            log.warning(
                "llm.retry",
                provider=self.provider,
                attempt=attempt,
                delay=round(delay, 2),
                cause=str(cause) if isinstance(cause, _StatusFailure) else type(cause).__name__,
            )
            await asyncio.sleep(delay)

    @staticmethod
    async def _events(response: httpx.Response) -> AsyncGenerator[LLMEvent, None]:
        acc = _Accumulator()
        done = False
        async for line in response.aiter_lines():
            line = line.strip()
            if not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments, event:/id: fields
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(data)
            except json.JSONDecodeError as exc:
                raise UpstreamError("The model provider sent an unreadable stream.") from exc
            if isinstance(chunk, dict):
                for event in acc.feed(chunk):
                    yield event
        if not done and acc.finish_reason is None:
            # The body ended cleanly but the answer did not: treat it as a dropped connection.
            raise UpstreamError("The model provider ended the stream early.")
        for call in acc.flush_calls():  # calls never closed by a finish_reason
            yield call
        yield acc.completed()
