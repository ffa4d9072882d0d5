"""A deterministic stand-in used when no model is configured. It says so in every answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.llm.base import Completed, LLMEvent, LLMRequest, TextDelta, Usage

OFFLINE_NOTICE = (
    "[offline model] No language model is configured, so this is a canned reply. "
    "Set ANTHROPIC_API_KEY (or LLM_PROVIDER=openai with OPENAI_BASE_URL) and restart to talk to a real model."
)


def _last_user_text(request: LLMRequest) -> str:
    for message in reversed(request.messages):
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return content
        texts = [b.get("text", "") for b in content if b.get("type") == "text"]
        if texts:
            return " ".join(texts)
    return ""


class OfflineModel:
    provider = "offline"

    async def aclose(self) -> None:
        return None

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[LLMEvent]]:
        yield self._events(request)

    @staticmethod
    async def _events(request: LLMRequest) -> AsyncIterator[LLMEvent]:
        said = _last_user_text(request).strip()
        text = f"{OFFLINE_NOTICE} You said: {said}" if said else OFFLINE_NOTICE
        words = text.split(" ")
        for index, word in enumerate(words):
            await asyncio.sleep(0)  # a real checkpoint, like a network read
            yield TextDelta(word if index == 0 else " " + word)
        usage = Usage(
            input_tokens=sum(len(str(m["content"]).split()) for m in request.messages), output_tokens=len(words)
        )
        yield Completed(stop_reason="end_turn", usage=usage, content=[{"type": "text", "text": text}])
