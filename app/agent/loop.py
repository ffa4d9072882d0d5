"""The agent loop: call the model; run the tools it asks for, concurrently; call it again.

Everything produced is accumulated in a Transcript as it happens, so that however the loop ends
(answer, step limit, error, cancellation) the turn can record a history that replays cleanly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from pydantic import ValidationError

from app.agent.history import INTERRUPTED
from app.agent.registry import ToolRegistry
from app.agent.tools.base import ToolContext, ToolError
from app.core.config import Settings
from app.core.errors import AppError
from app.core.metrics import Metrics
from app.llm.base import Block, ChatModel, Completed, LLMRequest, TextDelta, ToolCall, Usage, text_of

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ToolResultEvent:
    tool_use_id: str
    content: str
    is_error: bool


Emit = Callable[[Any], Awaitable[None]]


@dataclass
class Transcript:
    """What one turn produced so far: finished steps' blocks, tool results, and the step in progress."""

    blocks: list[Block] = field(default_factory=list)
    partial: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    stop_reason: str | None = None
    steps: int = 0

    def text(self) -> str:
        return text_of(self.blocks, "".join(self.partial))

    def content(self) -> list[Block]:
        """Blocks to store: the partial step kept as text; a tool_use without result closed as interrupted."""
        blocks = list(self.blocks)
        if partial := "".join(self.partial):
            blocks.append({"type": "text", "text": partial})
        answered = {b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"}
        for block in self.blocks:
            if block.get("type") == "tool_use" and block["id"] not in answered:
                blocks.append(
                    {"type": "tool_result", "tool_use_id": block["id"], "content": INTERRUPTED, "is_error": True}
                )
        return blocks


def cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n…[truncated {len(text) - limit} characters]"


class Agent:
    def __init__(self, llm: ChatModel, tools: ToolRegistry, settings: Settings, metrics: Metrics) -> None:
        self.llm, self.tools, self.settings, self.metrics = llm, tools, settings, metrics

    async def run(self, request: LLMRequest, ctx: ToolContext, transcript: Transcript, emit: Emit) -> None:
        messages = list(request.messages)
        schemas = self.tools.schemas()
        for _ in range(self.settings.agent_max_steps):
            transcript.steps += 1
            completed = await self._call_model(
                dataclasses.replace(request, messages=messages, tools=schemas), transcript, emit
            )
            transcript.usage.add(completed.usage)
            transcript.partial.clear()
            transcript.blocks.extend(completed.content)
            transcript.stop_reason = completed.stop_reason
            calls = [b for b in completed.content if b.get("type") == "tool_use"]
            if completed.stop_reason != "tool_use" or not calls:
                return
            results = await self._run_tools(calls, ctx, emit)
            transcript.blocks.extend(results)
            messages = [
                *messages,
                {"role": "assistant", "content": completed.content},
                {"role": "user", "content": results},
            ]
        transcript.stop_reason = "max_steps"
        log.info("agent.step_limit", steps=transcript.steps)

    async def _call_model(self, request: LLMRequest, transcript: Transcript, emit: Emit) -> Completed:
        completed: Completed | None = None
        started, first_token = time.perf_counter(), True
        try:
            async with self.llm.stream(request) as events:
                async for event in events:
                    if isinstance(event, TextDelta):
                        if first_token:
                            self.metrics.ttft.observe(time.perf_counter() - started)
                            first_token = False
                        transcript.partial.append(event.text)
                        await emit(event)
                    elif isinstance(event, ToolCall):
                        await emit(event)
                    elif isinstance(event, Completed):
                        completed = event
        except AppError as exc:
            self.metrics.upstream_errors.labels(exc.type).inc()
            raise
        finally:
            self.metrics.upstream_latency.labels(self.llm.provider).observe(time.perf_counter() - started)
        if completed is None:
            raise RuntimeError("The model stream ended without a final message.")
        return completed

    async def _run_tools(self, calls: list[Block], ctx: ToolContext, emit: Emit) -> list[Block]:
        results: dict[str, Block] = {}
        # A TaskGroup owns the calls; one failing tool becomes an error result, never a cancel of the others.
        async with anyio.create_task_group() as group:
            for call in calls:
                group.start_soon(self._run_tool, call, ctx, emit, results)
        return [results[call["id"]] for call in calls]

    async def _run_tool(self, call: Block, ctx: ToolContext, emit: Emit, results: dict[str, Block]) -> None:
        name, tool_id = call["name"], call["id"]
        tool = self.tools.get(name)
        is_error = True
        try:
            if tool is None:
                raise ToolError(f"There is no tool named {name!r}. Available: {', '.join(self.tools.names)}.")
            data = tool.input_model.model_validate(call.get("input") or {})
            timeout = tool.timeout or self.settings.agent_tool_timeout
            with anyio.fail_after(timeout):
                content = await tool.run(data, ctx)
            is_error = False
        except ToolError as exc:
            content = str(exc)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()[:5])
            content = f"Invalid input for {name}: {problems}."
        except TimeoutError:
            content = f"The tool {name} timed out after {timeout:g} seconds."
        except Exception as exc:
            log.exception("agent.tool.crashed", tool=name)
            content = f"The tool {name} failed unexpectedly ({type(exc).__name__})."
        content = cap(content, self.settings.agent_tool_result_max_chars)
        log.info("agent.tool.finished", tool=name, is_error=is_error, chars=len(content))
        results[tool_id] = {"type": "tool_result", "tool_use_id": tool_id, "content": content, "is_error": is_error}
        await emit(ToolResultEvent(tool_id, content, is_error))
