"""The agent loop: call the model; run the tools it asks for, concurrently; call it again.

Everything produced is accumulated in a Transcript as it happens, so that however the loop ends
(answer, step limit, error, cancellation) the turn can record a history that replays cleanly.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import structlog
from pydantic import ValidationError

from app.agent.history import INTERRUPTED
from app.agent.tools.base import Tool, ToolContext, ToolError
from app.core import telemetry
from app.core.config import Settings
from app.core.errors import AppError
from app.core.metrics import Metrics
from app.core.text import clean_text
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
    # Calls of the caller's own tools (LLMRequest.tools) that ended the turn: left open for the
    # caller's next turn to answer, never closed as interrupted.
    awaiting: list[str] = field(default_factory=list)
    # Calls of gated tools (an agent's `approval`) that paused the turn until a person decides.
    pending: list[Block] = field(default_factory=list)

    def text(self) -> str:
        return text_of(self.blocks, "".join(self.partial))

    def content(self) -> list[Block]:
        """Blocks to store: the partial step kept as text; a tool_use without result closed as interrupted."""
        blocks = list(self.blocks)
        if partial := "".join(self.partial):
            blocks.append({"type": "text", "text": partial})
        answered = {b["tool_use_id"] for b in blocks if b.get("type") == "tool_result"}
        for block in self.blocks:
            if block.get("type") != "tool_use" or block["id"] in answered:
                continue
            if block["id"] not in self.awaiting and all(call["id"] != block["id"] for call in self.pending):
                blocks.append(
                    {"type": "tool_result", "tool_use_id": block["id"], "content": INTERRUPTED, "is_error": True}
                )
        return blocks


def cap(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n…[truncated {len(text) - limit} characters]"


class CallGuard(Protocol):
    """Gates and meters each model call of a turn: `reserve` before it, `settle` after, and `check`
    during it whenever `due` says so.

    `reserve` raises an AppError to stop the turn at this step — the key was revoked meanwhile, or
    its token quota is spent (each call reserves its worst case, so a turn overshoots the quota by
    at most the one call that crossed it). `check` raises one to stop it mid-call (a revoked key).
    """

    async def reserve(self, request: LLMRequest) -> int: ...
    @property
    def settles(self) -> bool: ...  # whether settle() has anything to do
    async def settle(self, reserved: int, usage: Usage) -> None: ...
    def due(self) -> bool: ...
    async def check(self) -> None: ...


class Tools(Protocol):
    """The tools an agent offers (the registry, or one agent's view of it)."""

    @property
    def names(self) -> list[str]: ...
    def schemas(self) -> list[dict[str, Any]]: ...
    def get(self, name: str) -> Tool[Any] | None: ...
    def needs_approval(self, name: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """A person's decision on a pending call: run it (with `input` instead, if given) or deny it."""

    tool_use_id: str
    approve: bool
    input: dict[str, Any] | None = None
    reason: str | None = None


def denied(tool_use_id: str, reason: str | None) -> Block:
    text = f"The user denied this tool call: {reason}" if reason else "The user denied this tool call."
    return {"type": "tool_result", "tool_use_id": tool_use_id, "content": text, "is_error": True}


class Agent:
    def __init__(
        self,
        llm: ChatModel,
        tools: Tools,
        settings: Settings,
        metrics: Metrics,
        budget: CallGuard | None = None,
        *,
        max_steps: int | None = None,
        gated_offered: bool = True,
        name: str = "",
    ) -> None:
        self.llm, self.tools, self.settings, self.metrics, self.budget = llm, tools, settings, metrics, budget
        self.name = name  # the configured agent's: a label of its metrics, an attribute of its spans
        self.conversation_id: object = None  # the turn's, for the spans (set when it runs)
        self.max_steps = max_steps or settings.agent_max_steps
        # False where the door cannot carry an approval (Chat Completions): gated tools are not offered.
        self.gated_offered = gated_offered

    def _offered(self) -> list[dict[str, Any]]:
        schemas = self.tools.schemas()
        if self.gated_offered:
            return schemas
        return [schema for schema in schemas if not self.tools.needs_approval(schema["name"])]

    async def decide(
        self, pending: list[Block], decisions: list[Decision], ctx: ToolContext, transcript: Transcript, emit: Emit
    ) -> None:
        """A paused turn's pending calls as decided: approved ones run (with edited input, where given,
        which the stored call then shows), denied ones answered as `is_error` with the reason."""
        self.conversation_id = ctx.conversation_id
        by_id = {decision.tool_use_id: decision for decision in decisions}
        approved: list[Block] = []
        results: dict[str, Block] = {}
        for call in pending:
            decision = by_id[call["id"]]
            if not decision.approve:
                results[call["id"]] = denied(call["id"], decision.reason)
                await emit(ToolResultEvent(call["id"], results[call["id"]]["content"], True))
                continue
            if decision.input is not None:
                edited = {**call, "input": decision.input}
                transcript.blocks = [edited if b.get("id") == call["id"] else b for b in transcript.blocks]
                call = edited
            approved.append(call)
        ran = await self._run_tools(approved, ctx, emit) if approved else []
        results |= {block["tool_use_id"]: block for block in ran}
        transcript.blocks.extend(results[call["id"]] for call in pending)
        transcript.pending = []

    async def run(self, request: LLMRequest, ctx: ToolContext, transcript: Transcript, emit: Emit) -> None:
        self.conversation_id = ctx.conversation_id
        messages = list(request.messages)
        # request.tools are the caller's own (an OpenAI client's functions): offered beside ours; a
        # call of one ends the turn and goes back to the caller, who runs it.
        theirs = {tool["name"] for tool in request.tools}
        schemas = [*self._offered(), *request.tools] if theirs else self._offered()
        choice = request.tool_choice if schemas else None  # the first step only: then the model may answer
        for _ in range(self.max_steps):
            transcript.steps += 1
            step = dataclasses.replace(request, messages=messages, tools=schemas, tool_choice=choice)
            choice = None
            completed = await self._call_model(step, transcript, emit)
            transcript.usage.add(completed.usage)
            transcript.partial.clear()
            transcript.blocks.extend(completed.content)
            transcript.stop_reason = completed.stop_reason
            calls = [b for b in completed.content if b.get("type") == "tool_use"]
            if completed.stop_reason != "tool_use" or not calls:
                return
            awaiting = [call["id"] for call in calls if call["name"] in theirs]
            gated = [
                call
                for call in calls
                if call["name"] not in theirs and self.gated_offered and self.tools.needs_approval(call["name"])
            ]
            ours = [call for call in calls if call["name"] not in theirs and call not in gated]
            results = await self._run_tools(ours, ctx, emit)
            transcript.blocks.extend(results)
            if awaiting:
                transcript.awaiting = awaiting
                return
            if gated:
                # The turn pauses: the other calls ran; these wait for a person (nothing is held).
                transcript.pending, transcript.stop_reason = gated, "awaiting_approval"
                return
            messages = [
                *messages,
                {"role": "assistant", "content": completed.content},
                {"role": "user", "content": results},
            ]
        transcript.stop_reason = "max_steps"
        log.info("agent.step_limit", steps=transcript.steps)

    async def _call_model(self, request: LLMRequest, transcript: Transcript, emit: Emit) -> Completed:
        """One model call, in its `chat {model}` span (when traces are on), its tokens counted."""
        with telemetry.chat(
            provider=self.llm.provider,
            model=request.model,
            agent=self.name,
            conversation_id=self.conversation_id,
            system=request.system,
            messages=request.messages,
        ) as span:
            completed = await self._stream_model(request, transcript, emit)
            usage = completed.usage
            telemetry.chat_completed(
                span, model=request.model, stop_reason=completed.stop_reason, usage=usage, content=completed.content
            )
        metrics, tokens = self.metrics, self.metrics.gen_ai_tokens
        for kind, count in (
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_creation", usage.cache_creation_input_tokens),
        ):
            if count:
                metrics.labelled(tokens, kind, self.name, request.model).inc(count)
        return completed

    async def _stream_model(self, request: LLMRequest, transcript: Transcript, emit: Emit) -> Completed:
        guard = self.budget
        reserved = await guard.reserve(request) if guard is not None else 0
        completed: Completed | None = None
        started, first_token = time.perf_counter(), True
        outcome = "cancelled"  # until the call ends otherwise
        try:
            async with self.llm.stream(request) as events:
                async for event in events:
                    if guard is not None and guard.due():
                        await guard.check()  # raising here closes the call: the key was revoked
                    if isinstance(event, TextDelta):
                        if first_token:
                            elapsed = time.perf_counter() - started
                            self.metrics.ttft.observe(elapsed)
                            first_chunk = self.metrics.gen_ai_first_chunk
                            self.metrics.labelled(first_chunk, self.name, request.model).observe(elapsed)
                            first_token = False
                        transcript.partial.append(event.text)
                        await emit(event)
                    elif isinstance(event, ToolCall):
                        await emit(event)
                    elif isinstance(event, Completed):
                        completed = event
            outcome = "ok"
        except AppError as exc:
            outcome = exc.type
            self.metrics.upstream_errors.labels(exc.type).inc()
            raise
        except Exception:
            outcome = "crashed"
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics = self.metrics
            metrics.labelled(metrics.upstream_latency, self.llm.provider).observe(elapsed)
            metrics.labelled(metrics.gen_ai_duration, self.name, request.model, outcome).observe(elapsed)
            if self.budget is not None and self.budget.settles:
                # Shielded: a cancelled call (client left) still gives back what it did not use.
                with anyio.move_on_after(2, shield=True):
                    await self.budget.settle(reserved, completed.usage if completed is not None else Usage())
        if completed is None:
            raise RuntimeError("The model stream ended without a final message.")
        return completed

    async def _run_tools(self, calls: list[Block], ctx: ToolContext, emit: Emit) -> list[Block]:
        results: dict[str, Block] = {}
        cap = self.settings.agent_max_tool_calls_per_step
        # A TaskGroup owns the calls; one failing tool becomes an error result, never a cancel of the others.
        async with anyio.create_task_group() as group:
            for call in calls[:cap]:
                group.start_soon(self._run_tool, call, ctx, emit, results)
        for call in calls[cap:]:
            # Refused, not run: one model step cannot fan out without bound. The model reads why.
            content = f"Not run: at most {cap} tool calls per step; call the rest in the next step."
            tool_id = call["id"]
            results[tool_id] = {"type": "tool_result", "tool_use_id": tool_id, "content": content, "is_error": True}
            await emit(ToolResultEvent(tool_id, content, True))
        return [results[call["id"]] for call in calls]

    async def _run_tool(self, call: Block, ctx: ToolContext, emit: Emit, results: dict[str, Block]) -> None:
        name, tool_id = call["name"], call["id"]
        tool = self.tools.get(name)
        if tool is not None and not self.gated_offered and self.tools.needs_approval(name):
            tool = None  # not offered where no one can approve it: a forged call is refused, never run
        started = time.perf_counter()
        with telemetry.execute_tool(
            name=name,
            call_id=tool_id,
            arguments=call.get("input"),
            agent=self.name,
            conversation_id=ctx.conversation_id,
            mcp=bool(getattr(tool, "server", "")),
        ) as span:
            content, error_type = await self._tool_result(tool, call, ctx)
            telemetry.tool_finished(span, is_error=error_type is not None, error_type=error_type, result=content)
        label = name if tool is not None else "unknown"  # a name the model made up: not a label value
        self.metrics.tool_duration.labels(label).observe(time.perf_counter() - started)
        is_error = error_type is not None
        if error_type is not None:
            self.metrics.tool_errors.labels(label, error_type).inc()
        results[tool_id] = {"type": "tool_result", "tool_use_id": tool_id, "content": content, "is_error": is_error}
        await emit(ToolResultEvent(tool_id, content, is_error))

    async def _tool_result(self, tool: Tool[Any] | None, call: Block, ctx: ToolContext) -> tuple[str, str | None]:
        """What a tool call answers, and why it is an error (None: it is not)."""
        name = call["name"]
        is_error, error_type = True, "tool_error"
        try:
            if tool is None:
                error_type = "unknown_tool"
                offered = ", ".join(schema["name"] for schema in self._offered())
                raise ToolError(f"There is no tool named {name!r}. Available: {offered}.")
            data = tool.input_model.model_validate(call.get("input") or {})
            timeout = tool.timeout or self.settings.agent_tool_timeout
            with anyio.fail_after(timeout):
                content = await tool.run(data, ctx)
            ctx.turn_state.saw_untrusted_output |= tool.untrusted_output  # what `remember` records next
            is_error = False
        except ToolError as exc:
            content = str(exc)
        except ValidationError as exc:
            error_type = "invalid_input"
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors()[:5])
            content = f"Invalid input for {name}: {problems}."
        except TimeoutError:
            error_type = "timeout"
            content = f"The tool {name} timed out after {timeout:g} seconds."
        except Exception as exc:
            error_type = "crashed"
            log.exception("agent.tool.crashed", tool=name)
            content = f"The tool {name} failed unexpectedly ({type(exc).__name__})."
        content = cap(content, self.settings.agent_tool_result_max_chars)
        content = clean_text(content)  # a page with a NUL must not make the answer unstorable
        log.info("agent.tool.finished", tool=name, is_error=is_error, chars=len(content))
        return content, error_type if is_error else None
