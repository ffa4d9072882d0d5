"""Claude through the official SDK: one AsyncAnthropic per process, streamed calls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anthropic
import httpx2

from app.core.config import Settings
from app.core.errors import (
    UpstreamError,
    UpstreamOverloaded,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from app.llm.base import Completed, LLMEvent, LLMRequest, TextDelta, ToolCall, Usage


def _retry_after(exc: anthropic.APIStatusError, default: str) -> str:
    value = exc.response.headers.get("retry-after")
    return value if value and value.replace(".", "", 1).isdigit() else default


@contextmanager
def map_errors() -> Iterator[None]:
    """Translate SDK failures into the service's upstream errors (and their HTTP statuses)."""
    try:
        yield
    except (anthropic.APITimeoutError, httpx2.TimeoutException) as exc:
        raise UpstreamTimeout() from exc
    except anthropic.APIConnectionError as exc:
        raise UpstreamError("Could not reach the model provider.") from exc
    except httpx2.TransportError as exc:
        # Once streaming, the SDK lets transport errors through unwrapped: a dropped connection.
        raise UpstreamError("The connection to the model provider dropped mid-answer.") from exc
    except anthropic.RateLimitError as exc:
        raise UpstreamRateLimited(headers={"Retry-After": _retry_after(exc, "10")}) from exc
    except anthropic.APIStatusError as exc:
        body_type = _error_type(exc.body)
        if exc.status_code == 529 or body_type == "overloaded_error":
            raise UpstreamOverloaded(headers={"Retry-After": _retry_after(exc, "5")}) from exc
        if exc.status_code == 429 or body_type == "rate_limit_error":
            raise UpstreamRateLimited(headers={"Retry-After": _retry_after(exc, "10")}) from exc
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


def _usage(raw: Any) -> Usage:
    return Usage(
        input_tokens=raw.input_tokens or 0,
        output_tokens=raw.output_tokens or 0,
        cache_read_input_tokens=getattr(raw, "cache_read_input_tokens", None) or 0,
        cache_creation_input_tokens=getattr(raw, "cache_creation_input_tokens", None) or 0,
    )


def mark_cache_prefix(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mark the end of the history before the new turn, so the next call reads it from the cache."""
    if len(messages) < 2 or not messages[-2]["content"]:
        return messages
    prefix = dict(messages[-2])
    blocks = list(prefix["content"])
    blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}
    prefix["content"] = blocks
    return [*messages[:-2], prefix, messages[-1]]


class AnthropicModel:
    provider = "anthropic"

    def __init__(self, settings: Settings) -> None:
        assert settings.anthropic_api_key is not None
        self._client = anthropic.AsyncAnthropic(
            api_key=settings.anthropic_api_key.get_secret_value(),
            base_url=settings.anthropic_base_url,
            max_retries=settings.llm_max_retries,
            timeout=anthropic.Timeout(settings.llm_read_timeout, connect=settings.llm_connect_timeout),
            # One pool for every stream in flight; the SDK's default caps it at 1,000.
            http_client=anthropic.DefaultAsyncHttpxClient(
                limits=httpx2.Limits(max_connections=settings.llm_max_connections, max_keepalive_connections=100)
            ),
        )

    async def aclose(self) -> None:
        await self._client.close()

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[LLMEvent]]:
        kwargs: dict[str, Any] = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "messages": mark_cache_prefix(request.messages),
        }
        if request.system:
            # The system prompt (and tools) are the stable prefix: cache them.
            kwargs["system"] = [{"type": "text", "text": request.system, "cache_control": {"type": "ephemeral"}}]
        if request.tools:
            kwargs["tools"] = request.tools
        with map_errors():
            if not request.incremental:
                yield self._whole(await self._client.messages.create(**kwargs))
                return
            async with self._client.messages.stream(**kwargs) as upstream:
                yield self._events(upstream)

    @staticmethod
    async def _whole(message: Any) -> AsyncIterator[LLMEvent]:
        content = [block.model_dump(mode="json", exclude_none=True) for block in message.content]
        for block in content:
            if block["type"] == "text" and block["text"]:
                yield TextDelta(block["text"])
            elif block["type"] == "tool_use":
                yield ToolCall(id=block["id"], name=block["name"], input=dict(block.get("input") or {}))
        yield Completed(stop_reason=message.stop_reason or "end_turn", usage=_usage(message.usage), content=content)

    @staticmethod
    async def _events(upstream: Any) -> AsyncIterator[LLMEvent]:
        async for event in upstream:
            if event.type == "text":
                if event.text:
                    yield TextDelta(event.text)
            elif event.type == "content_block_stop" and event.content_block.type == "tool_use":
                block = event.content_block
                yield ToolCall(id=block.id, name=block.name, input=dict(block.input or {}))
        final = await upstream.get_final_message()
        content = [block.model_dump(mode="json", exclude_none=True) for block in final.content]
        yield Completed(stop_reason=final.stop_reason or "end_turn", usage=_usage(final.usage), content=content)
