"""Any OpenAI-compatible `/chat/completions` server (Ollama, vLLM, llama.cpp, OpenAI) through the `openai` SDK.

The SDK makes the call (auth, retries before the first byte, status errors) and decodes the event
stream; the rest of the service speaks Anthropic-shaped histories and blocks, so this module
translates at the edge, in both directions.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai

from app.core.config import Settings
from app.core.telemetry import trace_headers
from app.llm.base import Block, Completed, LLMEvent, LLMRequest, Sampling, TextDelta, ToolCall, Usage
from app.llm.errors import (
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    retry_after,
)

CHAT_PATH = "/chat/completions"
# What `post(stream=True)` asks for: the SDK decodes the SSE and each chunk's JSON, and with
# `cast_to=object` hands the chunk over as parsed (no typed model built per chunk).
_ChunkStream = openai.AsyncStream[object]
# The SDK refuses to start without a key, even for servers that need none (Ollama, llama.cpp): then
# it gets this placeholder, which every call leaves out (`Authorization` omitted).
_NO_KEY = "unused"

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


# --- errors ---------------------------------------------------------------------------------------


@contextmanager
def map_errors(*, streaming: bool = False) -> Iterator[None]:
    """Translate SDK failures into the service's upstream errors (and their HTTP statuses).

    `streaming`: the answer had begun (status 200), so a lost connection dropped mid-answer.
    """
    try:
        yield
    except openai.APITimeoutError as exc:
        raise UpstreamTimeout() from exc
    except openai.APIConnectionError as exc:
        if streaming:
            raise UpstreamError("The connection to the model provider dropped mid-answer.") from exc
        raise UpstreamError("Could not reach the model provider.") from exc
    except openai.APIStatusError as exc:
        raise _status_error(exc.status_code, exc.response.headers) from exc
    except openai.APIError as exc:
        # An error chunk inside a stream that had begun with 200.
        raise UpstreamError("The model provider failed mid-stream.") from exc
    except json.JSONDecodeError as exc:
        raise UpstreamError("The model provider sent an unreadable stream.") from exc


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
    return UpstreamRejected(f"The model provider rejected the request ({status}).")


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
    if any(b.get("type") in ("image", "document") for b in blocks):
        messages.append({"role": role, "content": _parts(blocks)})
    elif text or not messages:
        messages.append({"role": role, "content": text})
    return messages


def _parts(blocks: list[Block]) -> list[dict[str, Any]]:
    """A user message with files, as content parts: images as `image_url` parts with data URLs, PDFs
    as `file` parts (`file_data`, a data URL), text as text, in their order."""
    parts: list[dict[str, Any]] = []
    for b in blocks:
        kind, source = b.get("type"), b.get("source") or {}
        if kind == "text" and b.get("text"):
            parts.append({"type": "text", "text": b["text"]})
        elif kind == "image":
            url = f"data:{source.get('media_type')};base64,{source.get('data')}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        elif kind == "document":
            data = f"data:{source.get('media_type')};base64,{source.get('data')}"
            parts.append({"type": "file", "file": {"filename": b.get("title") or "document.pdf", "file_data": data}})
    return parts


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
    payload.update(sampling_params(request.sampling))
    return payload


def _within(value: float | None, low: float, high: float) -> float | None:
    return None if value is None else min(max(value, low), high)


def sampling_params(sampling: Sampling) -> dict[str, Any]:
    """A client's sampling as Chat Completions takes it, each value within OpenAI's range (a server
    that does not know one ignores it, as OpenAI-compatible servers do)."""
    params: dict[str, Any] = {
        "temperature": _within(sampling.temperature, 0.0, 2.0),
        "top_p": _within(sampling.top_p, 0.0, 1.0),
        "frequency_penalty": _within(sampling.frequency_penalty, -2.0, 2.0),
        "presence_penalty": _within(sampling.presence_penalty, -2.0, 2.0),
        "seed": sampling.seed,
        "stop": list(sampling.stop[:4]) or None,  # OpenAI takes up to 4
    }
    return {name: value for name, value in params.items() if value is not None}


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


async def _events(chunks: AsyncIterator[object]) -> AsyncGenerator[LLMEvent, None]:
    acc = _Accumulator()
    with map_errors(streaming=True):
        async for chunk in chunks:
            if isinstance(chunk, dict):
                for event in acc.feed(chunk):
                    yield event
    if acc.finish_reason is None:
        # The body ended cleanly but the answer did not: treat it as a dropped connection.
        raise UpstreamError("The model provider ended the stream early.")
    for call in acc.flush_calls():  # calls never closed by a finish_reason
        yield call
    yield acc.completed()


# --- the provider ---------------------------------------------------------------------------------


class OpenAICompatModel:
    provider = "openai"

    def __init__(self, settings: Settings, http: httpx2.AsyncClient) -> None:
        key = settings.openai_api_key
        self._client = openai.AsyncOpenAI(
            api_key=key.get_secret_value() if key is not None else _NO_KEY,
            base_url=settings.openai_base_url,
            max_retries=settings.llm_max_retries,
            timeout=openai.Timeout(settings.llm_read_timeout, connect=settings.llm_connect_timeout),
            http_client=http,  # the app's shared client: its lifespan owns it, not us
        )
        self._headers: dict[str, str | openai.Omit] = {} if key is not None else {"Authorization": openai.omit}

    async def aclose(self) -> None:
        return None  # closing the SDK client would close the shared HTTP client

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[LLMEvent]]:
        # The SDK's documented way in for any request (`post`), with the body as built here:
        # `chat.completions.create` would walk and copy the whole body (history and tool schemas)
        # on each call only to send the same JSON, and build a typed model per chunk we read a few
        # fields of. Retries (429, 5xx, connection failures; Retry-After, x-should-retry) are the
        # SDK's, and only ever before the first byte of the answer, so nothing reaches us twice.
        with map_errors():
            chunks = await self._client.post(
                CHAT_PATH,
                body=build_payload(request),
                cast_to=object,
                # The trace goes on to the provider (traceparent; nothing added when traces are off).
                options={"headers": {**self._headers, **traced} if (traced := trace_headers()) else self._headers},
                stream=True,
                stream_cls=_ChunkStream,
            )
        try:
            async with aclosing(_events(chunks)) as events:
                yield events
        finally:
            await chunks.close()  # closes the upstream response wherever the reading stopped
