"""Long conversations: know their size, and compact them before they stop fitting.

A conversation's stored rows stay as they were (the history API shows them all). What the model
sees is a *view* of them, folded by the latest compaction row (role `summary`, one content block of
type `compaction`):

- the summary of messages A..B (`covers`), written by the agent's `summary_model`, sent first, in
  place of those messages;
- tool results of messages before `cleared_before` replaced by a stub (`[tool result cleared: N
  chars]`); the calls and their ids stay, so the history stays valid;
- every message after B verbatim.

The view depends only on the stored rows, so the prompt prefix (system prompt, summary, the turns
since) is byte-identical from one call to the next until the next compaction; the Anthropic
provider puts a cache breakpoint after the summary (see `is_summary_block`).

A compaction runs after a turn is recorded, when the turn's history passed `compact_at` of the
agent's window: in the background, in the `Compactor`'s task group, one per conversation at a time
across replicas (a lock from app/core/locks.py). It never holds a connection across the summarizer's
call (one short read, the call, one INSERT). Context editing comes first; if that is not enough, the
oldest turns are summarized. If the summarizer fails, those turns are dropped instead (logged once,
recorded as a `fallback` compaction). Its tokens count against the key's quota and are stored on the
compaction row (its usage in the history API).

An agent with `compaction: provider` (Anthropic only) has none of this: its calls ask the provider
to edit and compact the context server-side (`provider_context`, triggers from the same budget), and
the history starts at the provider's latest compaction block (app/agent/history.py); nothing is
summarized here, and turns are dropped only when even that history does not fit.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import TaskGroup
from redis.exceptions import RedisError
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.agent.history import build_history, estimate_tokens
from app.conversations.branches import branch, latest_leaf
from app.conversations.branches import parents as branch_parents
from app.core.config import Settings
from app.core.ids import uuid7
from app.core.locks import LockManager, kept
from app.llm.base import Block, Completed, ContextManagement, LLMRequest, Usage, text_of
from app.llm.summary import COMPACTION, SUMMARY_ROLE, compaction_of, summary_text
from app.models import Conversation, Message, ModelUsage
from app.models.base import utcnow
from app.models.conversations import MessageStatus

if TYPE_CHECKING:
    from app.agents.catalog import AgentCatalog, ServedAgent
    from app.auth.limits import Limits
    from app.turns.begin import TurnStarted
    from app.turns.turn import Turn

log = structlog.get_logger(__name__)

KEEP_TURNS = 2  # the last turns are never summarized nor cleared
EDIT_ENOUGH = 0.8  # context editing alone is enough when it brings the size under this share of the threshold
TARGET = 0.5  # a summary leaves the history at about this share of the threshold
SUMMARY_MAX_TOKENS = 2048
MESSAGE_CHARS = 6000  # of each message, in the transcript the summarizer reads
RESULT_CHARS = 800  # of each tool result, there
KEEP_TOOL_USES = 3  # `compaction: provider`: the last tool uses the provider never clears

SUMMARY_PROMPT = """You are summarizing the earlier part of a conversation between a user and an AI assistant, \
so that the assistant can continue it without the original messages. Write a compact summary that keeps:
- every fact the user stated about themselves, their work, their preferences and constraints, \
verbatim where it matters (names, numbers, dates, identifiers, file paths);
- the decisions made and why, and what was tried and did not work;
- the open tasks, questions and promises still pending, and what the user asked for last;
- results of tool calls that later turns rely on.
Leave out greetings, repetition and anything already resolved that will not matter again. If a \
previous summary is given, fold it in: the new summary replaces it, so keep everything of it that \
still matters. Write plain text in short sections (Facts, Decisions, Open tasks, Context). \
Do not address the user; do not invent anything."""

# Context windows of known models, by name prefix (longest first wins); anything else: DEFAULT_WINDOW.
KNOWN_WINDOWS: tuple[tuple[str, int], ...] = (
    ("claude-", 200_000),
    ("gpt-4.1", 1_047_576),
    ("gpt-5", 400_000),
    ("gpt-4o", 128_000),
    ("gpt-4-turbo", 128_000),
    ("o1", 200_000),
    ("o3", 200_000),
    ("o4", 200_000),
    ("gemini-", 1_048_576),
    ("llama", 128_000),
    ("qwen", 32_768),
    ("mistral", 32_768),
)
DEFAULT_WINDOW = 128_000


def known_window(model: str) -> int:
    name = model.lower().rsplit("/", 1)[-1]
    found = [(prefix, size) for prefix, size in KNOWN_WINDOWS if name.startswith(prefix)]
    return max(found, key=lambda p: len(p[0]))[1] if found else DEFAULT_WINDOW


@dataclass(frozen=True, slots=True)
class Budget:
    """An agent's limits, in estimated tokens: compact past `threshold`; past `fits` (the history's
    share of the window, or HISTORY_TOKEN_BUDGET) the oldest turns are dropped before the call.
    `enabled`: our compaction runs; `provider`: the provider's does instead."""

    window: int
    threshold: int
    fits: int
    enabled: bool
    provider: bool = False


def budget_of(agent: ServedAgent, settings: Settings, *, system: str | None = None, tools: Any = ()) -> Budget:
    config = agent.config
    window = config.context_window or known_window(agent.model)
    fixed = estimate_text(system or "") + (estimate_text(json.dumps(tools)) if tools else 0)
    fits = max(100, min(settings.history_token_budget, window - agent.max_tokens - fixed))
    threshold = int(config.compact_at * min(window, settings.history_token_budget + agent.max_tokens))
    return Budget(window, threshold, fits, config.compaction == "auto", config.compaction == "provider")


def provider_context(agent: ServedAgent, settings: Settings) -> ContextManagement | None:
    """What an agent with `compaction: provider` asks of the provider on each call (None: another
    agent): as ours, editing first (old tool results cleared past EDIT_ENOUGH of the threshold,
    when that frees a tenth of it at least, so a broken cache prefix is worth it), then a summary
    past the threshold (at least the provider's minimum, app/llm/anthropic.py)."""
    budget = budget_of(agent, settings)
    if not budget.provider:
        return None
    threshold = budget.threshold
    return ContextManagement(int(threshold * EDIT_ENOUGH), threshold, KEEP_TOOL_USES, threshold // 10)


def history_budget(agent: ServedAgent, settings: Settings, system: str | None, tools: Any) -> int:
    """How many (estimated) tokens of history a call may send: what fits when compaction is on (ours
    or the provider's), else HISTORY_TOKEN_BUDGET as before."""
    budget = budget_of(agent, settings, system=system, tools=tools)
    return budget.fits if budget.enabled or budget.provider else settings.history_token_budget


def estimate_text(text: str) -> int:
    return len(text) // 4


def estimate_content(content: Any) -> int:
    """Tokens of a stored message's blocks, estimated as app/agent/history.py does (chars / 4; an
    attached file by its kind and size, not by its reference's few characters)."""
    return estimate_tokens({"content": content})


def _blocks(content: Any) -> list[Block]:
    return list(json.loads(content) if isinstance(content, str) else content or [])


def _chars(content: Any) -> int:
    if isinstance(content, list):
        return sum(len(str(b.get("text", ""))) for b in content if isinstance(b, dict))
    return len(str(content or ""))


def cleared(content: Any) -> list[Block]:
    """A message's blocks with each tool result replaced by a stub (call ids kept)."""
    out: list[Block] = []
    for block in _blocks(content):
        if block.get("type") == "tool_result":
            stub = f"[tool result cleared: {_chars(block.get('content'))} chars]"
            block = {**block, "content": stub}
        out.append(block)
    return out


Row = tuple[Any, str, Any]  # (id, role, content)


@dataclass(frozen=True, slots=True)
class View:
    """What the model sees of a conversation's rows under its latest compaction."""

    summary: str | None  # the summary text (None: none yet, or dropped turns only)
    covers: tuple[str, str] | None  # the first and last message id it stands for
    cleared_before: str | None
    rows: list[Row]  # the messages after `covers`, tool results before `cleared_before` stubbed

    def messages(self) -> list[tuple[str, Any]]:
        head = [("user", [{"type": "text", "text": summary_text(self.summary)}])] if self.summary else []
        return head + [(role, content) for _, role, content in self.rows]

    def tokens(self) -> int:
        head = estimate_text(summary_text(self.summary)) if self.summary else 0
        return head + sum(estimate_content(content) for _, _, content in self.rows)


def view_of(rows: Sequence[Row]) -> View:
    """The rows (in id order) as the model sees them: folded by the latest compaction row."""
    latest: dict[str, Any] | None = None
    for _, role, content in rows:
        if role == SUMMARY_ROLE:
            latest = compaction_of(content) or latest
    if latest is None:
        return View(None, None, None, [row for row in rows if row[1] != SUMMARY_ROLE])
    covers = tuple(latest["covers"]) if latest.get("covers") else None
    cleared_before = latest.get("cleared_before")
    kept: list[Row] = []
    for message_id, role, content in rows:
        key = str(message_id)  # UUIDv7 strings sort as the ids do
        if role == SUMMARY_ROLE or (covers is not None and key <= covers[1]):
            continue
        if cleared_before is not None and key < cleared_before:
            content = cleared(content)
        kept.append((message_id, role, content))
    return View(latest.get("text") or None, covers, cleared_before, kept)


class Folded(list[tuple[str, Any]]):
    """A history folded by a compaction; `compacted`: the `context` event's fields when that
    compaction is new to this turn (no answer since), for the turn's stream to show."""

    compacted: dict[str, Any] | None = None


def fold(rows: Sequence[Row]) -> list[tuple[str, Any]]:
    """Phase 1's history rows → the (role, content) rows the model sees (app/turns/store.py)."""
    if not any(role == SUMMARY_ROLE for _, role, _ in rows):
        return [(role, content) for _, role, content in rows]
    folded = Folded(view_of(rows).messages())
    latest = max(i for i, row in enumerate(rows) if row[1] == SUMMARY_ROLE)
    if not any(role == "assistant" for _, role, _ in rows[latest:]):
        folded.compacted = news(compaction_of(rows[latest][2]) or {})
    return folded


def trimmed(rows: Sequence[tuple[str, Any]], history: Sequence[dict[str, Any]]) -> bool:
    """Whether the oldest of these rows were dropped from the history to fit: its first message no
    longer starts with the first user row's first text (O(1), on every turn)."""
    first = next((content for role, content in rows if role == "user"), None)
    if first is None or not history:
        return False
    text = next((b.get("text") for b in _blocks(first) if b.get("type") == "text"), None)
    return text is not None and not any(b.get("text") == text for b in history[0]["content"][:2])


def news(block: dict[str, Any]) -> dict[str, Any]:
    """A compaction as the `context` event shows it."""
    fields = ("messages_summarized", "tokens_before", "tokens_after")
    return {"compacted": True, **{name: block.get(name, 0) for name in fields}}


@dataclass(frozen=True, slots=True)
class Plan:
    """One compaction: tool results cleared before `cleared_before`, and `summarize` (the oldest
    rows of the view) folded into the summary, which then covers `covers`."""

    previous: View
    cleared_before: str | None
    summarize: list[Row]
    covers: tuple[str, str] | None
    tokens_before: int
    kept_tokens: int  # of the rows left verbatim, after clearing

    @property
    def summarizes(self) -> bool:
        return bool(self.summarize)


def plan(rows: Sequence[Row], threshold: int, *, fixed: int = 0, reported: int = 0) -> Plan | None:
    """What to compact so the view (plus `fixed`: system prompt, tools) falls well under
    `threshold`; None when it is under it already, or too few turns would be left to act on.
    `reported`: the size the provider last reported, when larger than the estimate (it is the truth)."""
    view = view_of(rows)
    estimated = view.tokens() + fixed
    before = max(estimated, reported)
    scale = before / max(1, estimated)  # estimates in the provider's units, where it reported more
    if before <= threshold:
        return None
    kept = view.rows
    starts = [i for i, row in enumerate(kept) if row[1] == "user"]
    if len(starts) <= KEEP_TURNS:
        return None
    protect = starts[-KEEP_TURNS]  # the last turns stay as they are
    cleared_before = str(kept[protect][0])
    edited = [(m, r, cleared(c)) if i < protect else (m, r, c) for i, (m, r, c) in enumerate(kept)]
    sizes = [int(estimate_content(c) * scale) for _, _, c in edited]
    summary_tokens = estimate_text(summary_text(view.summary)) if view.summary else 0
    after_edit = summary_tokens + sum(sizes) + fixed
    if cleared_before != view.cleared_before and after_edit < before and after_edit <= threshold * EDIT_ENOUGH:
        # Clearing old tool results is enough.
        return Plan(view, cleared_before, [], view.covers, before, sum(sizes))
    # Summarize the oldest turns: the fewest that bring the rest under the target (the new summary
    # is counted at its largest), never the last KEEP_TURNS.
    target = threshold * TARGET - SUMMARY_MAX_TOKENS - fixed
    cut = next((s for s in starts if s > 0 and sum(sizes[s:]) <= target), protect)
    cut = min(cut, protect) or protect
    summarize = kept[:cut]
    first = view.covers[0] if view.covers is not None else str(kept[0][0])
    return Plan(view, cleared_before, summarize, (first, str(kept[cut - 1][0])), before, sum(sizes[cut:]))


def acted_on_last(rows: Sequence[Row], cleared_before: str | None) -> Any:
    """The last message a compaction acts on: the one before the first of the turns it keeps as they
    are (`cleared_before`); None when there is none."""
    last = None
    for message_id, role, _ in rows:
        if str(message_id) == cleared_before:
            return last
        if role != SUMMARY_ROLE:
            last = message_id
    return None


def transcript(previous: str | None, rows: Sequence[Row]) -> str:
    """The summarizer's input: the summary so far, then the messages to fold in, as plain text."""
    lines: list[str] = []
    if previous:
        lines += ["Summary so far:", previous, ""]
    lines.append("Messages to fold in:")
    for _, role, content in rows:
        for block in _blocks(content):
            kind = block.get("type")
            if kind == "text":
                text = str(block.get("text", ""))
                if len(text) > MESSAGE_CHARS:
                    half = MESSAGE_CHARS // 2
                    text = f"{text[:half]} […{len(text) - MESSAGE_CHARS} chars…] {text[-half:]}"
                lines.append(f"{'User' if role == 'user' else 'Assistant'}: {text}")
            elif kind == "tool_use":
                lines.append(f"Assistant called {block.get('name')}({json.dumps(block.get('input') or {})[:400]})")
            elif kind == "tool_result":
                result = block.get("content")
                text = result if isinstance(result, str) else text_of(result or [])
                lines.append(f"Tool result{' (error)' if block.get('is_error') else ''}: {text[:RESULT_CHARS]}")
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Job:
    conversation_id: uuid.UUID
    owner_id: uuid.UUID
    agent: str
    system: str | None
    tools: tuple[dict[str, Any], ...] = ()
    reported: int = 0  # the conversation's size as the provider last reported it (0: unknown)
    # The branch to compact (app/conversations/branches.py): the one through this turn's answer
    # (None: the latest). The compaction row hangs below its last message.
    leaf: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class Compacted:
    """What a compaction did: the `context` event's fields."""

    messages_summarized: int
    tokens_before: int
    tokens_after: int
    fallback: bool = False
    cleared_only: bool = False

    def event(self) -> dict[str, Any]:
        return {
            "compacted": True,
            "messages_summarized": self.messages_summarized,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
        }


class SummaryFailed(Exception):
    pass


@dataclass(eq=False)
class Compactor:
    """Runs compactions in the background, in its own task group (entered by the lifespan)."""

    sessions: async_sessionmaker[AsyncSession]
    locks: LockManager
    limits: Limits | None
    agents: AgentCatalog
    settings: Settings
    _group: TaskGroup | None = None
    _stack: AsyncExitStack = field(default_factory=AsyncExitStack)
    _running: set[uuid.UUID] = field(default_factory=set)
    _idle: anyio.Event | None = None

    async def __aenter__(self) -> Compactor:
        self._group = await self._stack.enter_async_context(anyio.create_task_group())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Whatever is still running is abandoned: nothing is half-written (the row is one INSERT),
        # and the next turn of that conversation asks again.
        assert self._group is not None
        self._group.cancel_scope.cancel()
        await self._stack.aclose()

    async def after_turn(self, turn: Turn) -> None:
        """A Turn's `after_record` hook: schedule a compaction when its history passed `compact_at`."""
        if not turn.saved or turn.status not in (MessageStatus.COMPLETE, MessageStatus.INCOMPLETE):
            return
        started = turn.started
        request = started.request
        budget = budget_of(started.agent, self.settings, system=request.system, tools=request.tools)
        if not budget.enabled:
            return
        size = sum(estimate_content(m["content"]) for m in request.messages) + estimate_content(turn.transcript.blocks)
        size += estimate_text(request.system or "") + (estimate_text(json.dumps(request.tools)) if request.tools else 0)
        usage, reported = turn.usage, 0
        if not any(b.get("type") == "tool_use" for b in turn.transcript.blocks):
            # One model call: its usage is the prompt as the provider counted it, and the answer.
            prompt = usage.input_tokens + usage.cache_read_input_tokens + usage.cache_creation_input_tokens
            reported = prompt + usage.output_tokens if prompt else 0
        if max(size, reported) > budget.threshold:
            self.schedule(
                Job(started.conversation_id, turn.context.owner_id, started.agent.name, request.system,
                    tuple(request.tools), reported, leaf=started.message_id)
            )  # fmt: skip

    def schedule(self, job: Job) -> bool:
        """Start a compaction of the conversation unless this process runs one for it already."""
        if self._group is None or job.conversation_id in self._running:
            return False
        self._running.add(job.conversation_id)
        if self._idle is None or self._idle.is_set():
            self._idle = anyio.Event()
        self._group.start_soon(self._run, job)
        return True

    async def idle(self) -> None:
        """Until no compaction of this process is running (tests, the bench)."""
        while self._idle is not None and not self._idle.is_set():
            await self._idle.wait()

    async def _run(self, job: Job) -> None:
        try:
            await self.compact(job)
        except Exception:
            log.exception("compaction.crashed", conversation_id=str(job.conversation_id))
        finally:
            self._running.discard(job.conversation_id)
            if not self._running and self._idle is not None:
                self._idle.set()

    async def before_call(self, started: TurnStarted, owner_id: uuid.UUID) -> TurnStarted:
        """A turn whose history does not fit at all: compact now, before its model call (phase 1 is
        done, no connection held), and send the compacted history. The turn as it was if that
        cannot be done (the oldest turns are dropped then, as before). Never for an agent whose
        provider compacts (`compaction: provider`): its history is cut at the provider's compaction."""
        if started.agent.config.compaction != "auto":
            return started
        request = started.request
        job = Job(started.conversation_id, owner_id, started.agent.name, request.system, tuple(request.tools))
        try:
            done = await self.compact(job, before=started.message_id)
        except Exception:
            log.exception("compaction.crashed", conversation_id=str(job.conversation_id))
            return started
        if done is None:
            return started
        compacted, view = done
        budget = history_budget(started.agent, self.settings, request.system, request.tools)
        messages = build_history(view.messages(), list(request.messages[-1]["content"]), budget=budget)
        request = dataclasses.replace(request, messages=messages)
        return dataclasses.replace(started, request=request, compacted=compacted.event())

    async def compact(self, job: Job, *, before: uuid.UUID | None = None) -> tuple[Compacted, View] | None:
        """One compaction of the conversation, if it needs one and no one else is compacting it.
        `before`: a turn's answer placeholder; only the history before its user message counts."""
        try:
            lock = await self.locks.acquire(f"compaction:{job.conversation_id}")
        except (RedisError, OSError) as exc:
            log.warning("compaction.lock_unavailable", error=type(exc).__name__)
            return None
        if lock is None:
            return None  # another replica is on it
        async with kept(self.locks, lock):
            return await self._compact(job, before)

    async def _compact(self, job: Job, before: uuid.UUID | None) -> tuple[Compacted, View] | None:
        agent = self.agents.resolve(job.agent, None) if job.agent in self.agents else None
        if agent is None:
            return None
        budget = budget_of(agent, self.settings, system=job.system, tools=list(job.tools))
        read = await self._read(job, before)
        if read is None:
            return None
        rows, anchor = read
        fixed = estimate_text(job.system or "") + (estimate_text(json.dumps(list(job.tools))) if job.tools else 0)
        # The provider's count stands for this history only until the next message (a turn's, or this compaction's).
        todo = plan(rows, budget.threshold, fixed=fixed, reported=job.reported if before is None else 0)
        if todo is None:
            return None
        previous = todo.previous
        text, usage, fallback = previous.summary, Usage(), False
        model = agent.config.summary_model or agent.model
        if todo.summarizes:
            try:
                text, usage = await self._summarize(agent, model, previous.summary, todo.summarize)
            except Exception as exc:  # the turn still works: the oldest turns are dropped instead
                fallback = True
                log.warning(
                    "compaction.summary_failed",
                    conversation_id=str(job.conversation_id),
                    error=type(exc).__name__,
                    messages_dropped=len(todo.summarize),
                )
        after = (estimate_text(summary_text(text)) if text else 0) + todo.kept_tokens + fixed
        done = Compacted(len(todo.summarize), todo.tokens_before, after, fallback, not todo.summarizes)
        block = {
            "type": COMPACTION,
            "text": text,
            "covers": list(todo.covers) if todo.covers is not None else None,
            "cleared_before": todo.cleared_before,
            "messages_summarized": done.messages_summarized,
            "tokens_before": done.tokens_before,
            "tokens_after": done.tokens_after,
            "fallback": fallback,
        }
        # Below the last message it acts on (the one before the turns it keeps): every branch through
        # that message reads it — a regenerated last answer, an edit of the last message too.
        below = acted_on_last(rows, todo.cleared_before) or anchor
        stored = await self._store(job, block, usage, model if todo.summarizes else None, below)
        if stored is None:
            return None
        if self.limits is not None and (used := usage.input_tokens + usage.output_tokens):
            try:
                await self.limits.settle_tokens(job.owner_id, 0, used)
            except (RedisError, OSError) as exc:
                log.warning("limits.unavailable", feature="token_quota", error=type(exc).__name__)
        log.info("compaction.done", conversation_id=str(job.conversation_id), **done.event(), fallback=fallback)
        return done, view_of([*rows, stored])

    async def _read(self, job: Job, before: uuid.UUID | None = None) -> tuple[list[Row], uuid.UUID | None] | None:
        """The branch to compact, in one short session (its connection given back before the call),
        and its last message (the compaction row goes below it). `before`: a turn's answer
        placeholder: its branch up to its user message, which stays verbatim after the compaction."""
        async with self.sessions() as session:
            owned = Conversation.id == job.conversation_id, Conversation.owner_id == job.owner_id
            if (await session.execute(select(Conversation.id).where(*owned))).first() is None:
                return None
            query = select(Message.id, Message.parent_id, Message.role, Message.content).where(
                Message.conversation_id == job.conversation_id
            )
            rows = (await session.execute(query.order_by(Message.id))).all()
        parents = branch_parents(rows)
        if before is not None:
            user = parents.get(before)
            anchor = parents.get(user) if user is not None else None
        else:
            anchor = job.leaf if job.leaf in parents else latest_leaf(rows)
        return [(row.id, row.role, row.content) for row in branch(rows, anchor)], anchor

    async def _summarize(
        self, agent: ServedAgent, model: str, previous: str | None, rows: list[Row]
    ) -> tuple[str, Usage]:
        request = LLMRequest(
            model=model,
            messages=[{"role": "user", "content": [{"type": "text", "text": transcript(previous, rows)}]}],
            max_tokens=SUMMARY_MAX_TOKENS,
            system=SUMMARY_PROMPT,
            incremental=False,
        )
        completed: Completed | None = None
        with anyio.fail_after(self.settings.llm_read_timeout + 30):
            async with agent.llm.stream(request) as events:
                async for event in events:
                    if isinstance(event, Completed):
                        completed = event
        if completed is None or not (text := text_of(completed.content).strip()):
            raise SummaryFailed("the summarizer returned no text")
        return text, completed.usage

    async def _store(
        self, job: Job, block: dict[str, Any], usage: Usage, model: str | None, anchor: uuid.UUID | None
    ) -> Row | None:
        now = utcnow()
        row = {
            "id": uuid7(),
            "conversation_id": job.conversation_id,
            "parent_id": anchor,
            "role": SUMMARY_ROLE,
            "content": [block],
            "status": MessageStatus.COMPLETE.value,
            "model": model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_input_tokens,
            "cache_creation_tokens": usage.cache_creation_input_tokens,
            "created_at": now,
            "updated_at": now,
        }
        spent = {
            name: row[name] for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_creation_tokens")
        }
        try:
            async with self.sessions() as session, session.begin():
                await session.execute(insert(Message).values(**row))
                if model is not None and any(spent.values()):  # the summarizer's call, in GET /usage too
                    await session.execute(
                        insert(ModelUsage).values(
                            id=uuid7(), owner_id=job.owner_id, message_id=row["id"], agent=job.agent, model=model,
                            model_calls=1, created_at=now, **spent,
                        )
                    )  # fmt: skip
        except IntegrityError:  # the conversation was deleted meanwhile
            return None
        return row["id"], SUMMARY_ROLE, row["content"]
