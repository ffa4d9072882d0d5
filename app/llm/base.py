"""One small interface for every model provider.

Content blocks and histories use the Anthropic Messages shape throughout the service; other
providers translate at their edge.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

Block = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Sampling:
    """A client's sampling parameters (None: the provider's default). Each provider sends those it
    supports, within its own ranges, and leaves the rest out."""

    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class ContextManagement:
    """Server-side context management for a call (an agent's `compaction: provider`; Anthropic's
    context editing and compaction): past `clear_at` input tokens the oldest tool results are
    cleared (the last `keep_tool_uses` kept, and only when at least `clear_at_least` tokens go); past
    `compact_at` the provider summarizes the context into a compaction block, which later calls send
    back in place of what it covers."""

    clear_at: int
    compact_at: int
    keep_tool_uses: int = 3
    clear_at_least: int = 0


@dataclass(frozen=True, slots=True)
class LLMRequest:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int
    system: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    # Anthropic's shape ({"type": "auto" | "any" | "tool" | "none", "name"?}); None: the provider's default.
    tool_choice: dict[str, Any] | None = None
    # False when nobody watches the answer grow (a JSON turn): a provider may then make one
    # plain call, which costs far less to parse than a stream of events.
    incremental: bool = True
    sampling: Sampling = field(default_factory=Sampling)
    # The provider manages the context (None: we do, app/turns/compaction.py).
    context: ContextManagement | None = None


def text_of(blocks: list[Block], partial: str = "") -> str:
    """The text of content blocks as a reader sees it: text blocks (and any partial text) apart by a blank line."""
    texts = [b["text"] for b in blocks if b.get("type") == "text" and b.get("text")]
    if partial:
        texts.append(partial)
    return "\n\n".join(texts)


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool_use block, emitted once its input has fully arrived."""

    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Completed:
    stop_reason: str
    usage: Usage
    content: list[Block]


LLMEvent = TextDelta | ToolCall | Completed


@runtime_checkable
class FileSources(Protocol):
    """A provider with a files API: an attached file uploaded once (`data` reads its bytes, only when
    needed), named by the provider's id in every call. `key` is the file's content hash."""

    async def file_source(
        self, key: str, filename: str, media_type: str, data: Callable[[], Awaitable[bytes | None]]
    ) -> Block | None: ...


class ChatModel(Protocol):
    """A model provider. `stream()` opens one upstream call; leaving the block closes it."""

    provider: str

    def stream(self, request: LLMRequest) -> AbstractAsyncContextManager[AsyncIterator[LLMEvent]]: ...

    async def aclose(self) -> None: ...
