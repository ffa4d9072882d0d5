"""The SQL of a turn's phases: one statement per phase on Postgres (asyncpg), a short transaction
on SQLite; and the owner-scoped lookups of the conversation a turn continues.

`turn_store(tx)` gives the phases' store inside a transaction a phase opened (`async with
transactions() as tx`, see app/core/db.py). On Postgres the statements are written out for asyncpg:
phase 1 is one data-modifying CTE, phase 3 one UPDATE, each its own transaction, each holding its
connection for one round trip. Their parameters are typed records (`NewMessages`, `Outcome`) whose
field names are the columns they write; tests/turns pins those names to the models.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any, Literal, NamedTuple, Protocol

from sqlalchemy import Uuid, bindparam, delete, func, insert, null, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.agent.loop import denied
from app.conversations.branches import ROOT, branch, latest_leaf, parents
from app.conversations.errors import ConversationBusy
from app.conversations.repository import latest_message
from app.core.db import Driver, Tx
from app.core.ids import uuid7
from app.core.text import clean, clean_text
from app.llm.base import Block
from app.llm.summary import SUMMARY_ROLE
from app.models import Conversation, Message, QueuedMessage
from app.models.base import utcnow
from app.models.conversations import MessageStatus
from app.models.usage import ModelUsage
from app.turns.compaction import fold


@dataclass(frozen=True, slots=True)
class OpenedTurn:
    """What phase 1 stored and read: the conversation, the assistant placeholder, the history before it."""

    conversation_id: uuid.UUID
    assistant_id: uuid.UUID
    created_at: datetime
    system: str | None
    earlier: list[tuple[str, Any]]
    agent: str  # the agent the conversation is bound to
    # Answers of the conversation that were paused for approval, their pending calls now denied (this
    # new message supersedes them): (id, content with the denials), to be recorded so.
    superseded: list[tuple[uuid.UUID, list[Block]]] = field(default_factory=list)
    # A regenerated answer's user message (its blocks), which phase 1 read rather than stored.
    content: list[Block] | None = None


@dataclass(frozen=True, slots=True)
class Opening:
    """What phase 1 stores in either case: the owner's user message, and the answer's placeholder."""

    owner_id: uuid.UUID
    content: list[Block]
    model: str | None  # None: not known before the statement (recorded with the outcome)
    attributes: dict[str, Any] | None = None
    # A client's own history (role, blocks) stored ahead of the user's message; by `open_new` only.
    earlier: Sequence[tuple[str, list[Block]]] = ()


@dataclass(frozen=True, slots=True)
class NewMessages:
    """Phase 1's parameters: the user's message and the answer's placeholder, every id and the time
    taken before the statement is sent. jsonb goes to asyncpg as text."""

    user_id: uuid.UUID
    assistant_id: uuid.UUID
    content: str  # the user's blocks, as JSON
    model: str | None
    attributes: str | None  # as JSON
    now: datetime
    # The client's history as rows, [{"id", "parent_id", "role", "content"}] (one branch), as JSON,
    # and the last of them: the user's message goes below it.
    earlier: str | None = None
    user_parent: uuid.UUID | None = None

    @classmethod
    def of(cls, opening: Opening) -> NewMessages:
        # UUIDv7, taken in this order: the user's message sorts before the assistant's. Requests are
        # validated (422); cleaning here keeps any other caller from a 500 in Postgres.
        attributes = opening.attributes
        earlier: list[dict[str, Any]] = []
        for role, blocks in opening.earlier:
            parent = earlier[-1]["id"] if earlier else None
            earlier.append({"id": str(uuid7()), "parent_id": parent, "role": role, "content": blocks})
        return cls(
            user_id=uuid7(),
            assistant_id=uuid7(),
            content=json.dumps(clean(opening.content), ensure_ascii=False),
            model=opening.model,
            attributes=json.dumps(clean(attributes), ensure_ascii=False) if attributes is not None else None,
            now=utcnow(),
            earlier=json.dumps(clean(earlier), ensure_ascii=False) if earlier else None,
            user_parent=uuid.UUID(earlier[-1]["id"]) if earlier else None,
        )


@dataclass(frozen=True, slots=True)
class NewConversation:
    """Phase 1 of a new conversation, settled before it is stored: every id and timestamp is taken
    here, so the turn can go on (see `begin_turn`) while the statement is on its way."""

    opening: Opening
    title: str
    system: str | None
    agent: str
    messages: NewMessages
    opened: OpenedTurn
    external_id: str | None = None  # a client's id for it (unique per owner): ConversationBusy if taken
    end_user: str | None = None


def new_conversation(
    opening: Opening,
    *,
    title: str,
    system: str | None,
    agent: str,
    external_id: str | None = None,
    end_user: str | None = None,
) -> NewConversation:
    title, system = clean_text(title), clean_text(system) if system is not None else None
    messages, conversation_id = NewMessages.of(opening), uuid7()
    opened = OpenedTurn(conversation_id, messages.assistant_id, messages.now, system, [], agent)
    client = clean_text(external_id) if external_id else None, clean_text(end_user) if end_user else None
    return NewConversation(opening, title, system, agent, messages, opened, *client)


@dataclass(frozen=True, slots=True)
class NotOpened:
    """Phase 1 stored nothing: no such conversation of this owner (`bound` None), or one bound to
    the agent `bound`, outside the turn's `AgentFilter`; or (`message`) the answer it was to continue
    from or regenerate is not in it."""

    bound: str | None
    message: bool = False
    # The queued message the turn was to store is not queued any more (another run of it stored it).
    unqueued: bool = False


@dataclass(frozen=True, slots=True)
class Continues:
    """Where in a conversation a turn goes: below its latest message (the default); below the answer
    `parent` (an edit, or OpenAI's older previous_response_id; ROOT: a new first message); or as a
    new answer to the user message of the answer `regenerate`, beside it."""

    parent: uuid.UUID | None = None
    regenerate: uuid.UUID | None = None

    @property
    def mode(self) -> Literal["latest", "parent", "regenerate"]:
        return "regenerate" if self.regenerate is not None else "parent" if self.parent is not None else "latest"

    @property
    def named(self) -> uuid.UUID | None:
        return self.regenerate if self.regenerate is not None else self.parent


LATEST = Continues()


@dataclass(frozen=True, slots=True)
class AgentFilter:
    """Which conversations a turn may continue, by their agent: bound to one of `names` (a
    conversation from before agents, bound to none, counts as the `default` agent's)."""

    names: list[str]
    default: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """Phase 3's parameters: what an answer's row records. Each field is the `messages` column it sets."""

    status: str
    model: str
    content: list[Block]
    stop_reason: str | None
    error: dict[str, Any] | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int
    history_key: str | None

    def cleaned(self) -> Outcome:
        # Model output and tool results may hold NUL or lone surrogates, which Postgres refuses: an
        # answer that cannot be stored would stay `in_progress` for good.
        return Outcome(*(clean(getattr(self, name)) for name in OUTCOME_COLUMNS))


@dataclass(frozen=True, slots=True)
class Spent:
    """Phase 3's usage row, recorded by the same statement as the outcome: the model calls this
    execution of the turn made, per key, agent and model. Each field is the `model_usage` column it sets."""

    owner_id: uuid.UUID
    agent: str
    model: str
    model_calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_creation_tokens: int


class TurnStore(Protocol):
    async def open_new(self, new: NewConversation) -> None: ...

    async def open_existing(
        self,
        opening: Opening,
        *,
        conversation_id: uuid.UUID,
        agents: AgentFilter,
        continues: Continues = LATEST,
        read_history: bool = True,
        dequeue: uuid.UUID | None = None,
    ) -> OpenedTurn | NotOpened:
        """NotOpened when the conversation does not exist, is not this owner's, is bound to an agent
        outside `agents`, or does not hold the answer `continues` names: nothing is stored then, and
        it says which.

        The history read is the branch the turn continues (app/conversations/branches.py), or none
        (`read_history=False`). `dequeue`: the queued message this turn stores, removed from the
        queue with it (or not at all).
        """

    async def record(
        self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, outcome: Outcome, spent: Spent | None = None
    ) -> None:
        """Phase 3: record an assistant message's outcome; scoped to its conversation (owned by the caller).
        With `spent`, the turn's usage row too, in the same statement (only if the answer was recorded)."""


def turn_store(tx: Tx) -> TurnStore:
    """The phases' SQL inside a transaction a phase opened."""
    return PostgresTurns(tx.driver) if tx.driver is not None else SqliteTurns(tx.conn)


# The columns the written-out statements name (tests/turns pins them to the models).
MESSAGE_COLUMNS = (
    "id", "conversation_id", "parent_id", "role", "content", "status", "model", "attributes", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_creation_tokens", "created_at", "updated_at",
)  # fmt: skip
CONVERSATION_COLUMNS = (
    "id", "owner_id", "title", "system", "agent", "created_at", "updated_at", "external_id", "end_user",
)  # fmt: skip
_JSONB = {"content", "error"}
_ROOT = f"'{ROOT}'::uuid"

# Phase 1's statements, written with named parameters ({name}), numbered per variant by `_numbered`.
# The messages: rows joined to the conversation row, so nothing is inserted unless that row exists
# (and, continuing, is owned and the message it continues from is in it). The user's message goes
# below {user_parent} (an SQL expression), the answer below the user's message.
_TURN_ROWS = """VALUES
        ({user_id}::uuid, {user_parent}, 'user', {content}::jsonb, 'complete', NULL::varchar, NULL::jsonb),
        ({assistant_id}::uuid, {user_id}::uuid, 'assistant', '[]'::jsonb, 'in_progress', {model}::varchar,
            {attributes}::jsonb)"""
# The parent of the message `p` as branches read it (app/conversations/branches.py): a NULL parent
# (a row from before branches) is the message before it by id, compaction rows aside.
_PARENT_OF_P = """COALESCE(p.parent_id, (SELECT l.id FROM messages AS l
                WHERE l.conversation_id = p.conversation_id AND l.id < p.id AND l.role <> 'summary'
                ORDER BY l.id DESC LIMIT 1))"""
# A regenerated answer: no user message; the answer goes below the user message of the one it replaces.
_REGENERATED_ROWS = f"""VALUES
        ({{assistant_id}}::uuid, (SELECT {_PARENT_OF_P} FROM messages AS p WHERE p.id = {{parent}}::uuid),
            'assistant', '[]'::jsonb, 'in_progress', {{model}}::varchar, {{attributes}}::jsonb)"""
# A client's own history ahead of the turn's rows (a new conversation), as a JSON array of rows.
_EARLIER_ROWS = """
        SELECT e.id, e.parent_id, e.role, e.content, 'complete', NULL::varchar, NULL::jsonb
        FROM jsonb_to_recordset({earlier}::jsonb) AS e(id uuid, parent_id uuid, role varchar, content jsonb)
        UNION ALL """
_INSERT_MESSAGES = f"""
    INSERT INTO messages ({", ".join(MESSAGE_COLUMNS)})
    SELECT m.id, conversation.id, m.parent_id, m.role, m.content, m.status, m.model, m.attributes, 0, 0, 0, 0,
        {{now}}, {{now}}
    FROM conversation CROSS JOIN ({{rows}}) AS m(id, parent_id, role, content, status, model, attributes)
"""
_OPEN_NEW = (
    f"""
    WITH conversation AS (
        INSERT INTO conversations ({", ".join(CONVERSATION_COLUMNS)})
        VALUES ({{conversation}}, {{owner}}, {{title}}, {{system}}, {{agent}}, {{now}}, {{now}}, {{external_id}},
            {{end_user}})
        RETURNING id
    )"""
    + _INSERT_MESSAGES
)

# Where a continued turn's message goes: below the conversation's latest message (the latest
# leaf), or below the answer it names (ROOT: a new first message, an edit of the first one).
_LATEST_LEAF = """(SELECT l.id FROM messages AS l
            WHERE l.conversation_id = {conversation}::uuid AND l.role <> 'summary' ORDER BY l.id DESC LIMIT 1)"""
_PARENT_IS_AN_ANSWER = f"""
            AND ({{parent}}::uuid = {_ROOT} OR EXISTS (SELECT 1 FROM messages AS p
                WHERE p.id = {{parent}}::uuid AND p.conversation_id = {{conversation}}::uuid
                    AND p.role = 'assistant'))"""
_REGENERATES_AN_ANSWER = f"""
            AND EXISTS (SELECT 1 FROM messages AS p JOIN messages AS u ON u.id = {_PARENT_OF_P}
                WHERE p.id = {{parent}}::uuid AND p.conversation_id = {{conversation}}::uuid
                    AND p.role = 'assistant' AND u.conversation_id = p.conversation_id AND u.role = 'user')"""
# A queued message's turn (app/turns/queue.py): its queue row goes in the statement that stores it,
# only if the conversation was opened, and the turn's rows only if the row was still queued: two runs
# of one message (a replica cut off from Redis, its message adopted elsewhere) store it once — the
# second DELETE waits on the first's row lock, then finds nothing.
_DEQUEUE = """
    dequeued AS (
        DELETE FROM queued_messages WHERE id = {dequeue}::uuid AND conversation_id IN (SELECT id FROM conversation)
        RETURNING id
    ),"""


def _numbered(template: str, names: Sequence[str]) -> str:
    """A statement with its named parameters numbered in the order asyncpg is given them."""
    return template.format(**{name: f"${n}" for n, name in enumerate(names, start=1)})


_MESSAGE_PARAMS = ("conversation", "owner", "now", "user_id", "content", "assistant_id", "model", "attributes")
_NEW_PARAMS = (*_MESSAGE_PARAMS, "title", "system", "agent", "external_id", "end_user")


def _open_new(earlier: bool) -> str:
    rows = (_EARLIER_ROWS if earlier else "") + _TURN_ROWS
    user_parent = "{user_parent}::uuid" if earlier else "NULL::uuid"
    template = _OPEN_NEW.replace("{rows}", rows).replace("{user_parent}", user_parent)
    return _numbered(template, (*_NEW_PARAMS, "user_parent", "earlier") if earlier else _NEW_PARAMS)


_OPEN_NEW_PLAIN, _OPEN_NEW_EARLIER = _open_new(False), _open_new(True)


@functools.cache
def _open_existing(mode: Literal["latest", "parent", "regenerate"], history: bool, dequeue: bool) -> tuple[str, ...]:
    """Phase 1 of a continued turn: (statement, its parameters' names). The final SELECT reads the
    snapshot from before the statement: the conversation's rows without the new turn (none with
    `history` False), and why nothing was stored when nothing was (the conversation's agent)."""
    condition = {"latest": "", "parent": _PARENT_IS_AN_ANSWER, "regenerate": _REGENERATES_AN_ANSWER}[mode]
    insert = _INSERT_MESSAGES
    if dequeue:
        insert = insert.replace("FROM conversation CROSS JOIN", "FROM conversation CROSS JOIN dequeued CROSS JOIN")
    rows = _REGENERATED_ROWS if mode == "regenerate" else _TURN_ROWS
    user_parent = _LATEST_LEAF if mode == "latest" else "{parent}::uuid"  # ROOT stays: a first message
    template = (
        """
    WITH conversation AS (
        UPDATE conversations SET updated_at = {now}::timestamptz
        WHERE id = {conversation}::uuid AND owner_id = {owner}::uuid
            AND COALESCE(agent, {default_agent}::varchar) = ANY({agents}::varchar[])"""
        + condition
        + """
        RETURNING id, system, COALESCE(agent, {default_agent}::varchar) AS agent
    ),"""
        + (_DEQUEUE if dequeue else "")
        + """ turn AS ("""
        + insert.replace("{rows}", rows).replace("{user_parent}", user_parent)
        + ")"
        + """
    SELECT conversation.system, conversation.agent, m.role, m.content,
        (SELECT COALESCE(c.agent, {default_agent}::varchar) FROM conversations AS c
            WHERE c.id = {conversation}::uuid AND c.owner_id = {owner}::uuid),
        m.id, m.status, m.parent_id"""
        + (", (SELECT count(*) FROM dequeued)" if dequeue else "")
        + """
    FROM (SELECT 1) AS one
        LEFT JOIN conversation ON true
        LEFT JOIN messages AS m ON m.conversation_id = conversation.id"""
        + ("" if history else " AND false")
        + """
    ORDER BY m.id
    """
    )
    names = [*_MESSAGE_PARAMS, "agents", "default_agent"]
    if mode == "regenerate":  # no user message
        names.remove("user_id")
        names.remove("content")
    names += ["parent"] if mode != "latest" else []
    names += ["dequeue"] if dequeue else []
    return _numbered(template, names), *names


OUTCOME_COLUMNS = tuple(f.name for f in fields(Outcome))
_SET_OUTCOME = ", ".join(
    f"{name} = ${n}{'::jsonb' if name in _JSONB else ''}" for n, name in enumerate(OUTCOME_COLUMNS, start=1)
)
_N = len(OUTCOME_COLUMNS)
_RECORD = f"""
    UPDATE messages SET {_SET_OUTCOME}, updated_at = ${_N + 1}
    WHERE id = ${_N + 2} AND conversation_id = ${_N + 3}
"""


SPENT_COLUMNS = tuple(f.name for f in fields(Spent))
_SPENT_TYPES = ("uuid", "varchar", "varchar", "int", "bigint", "bigint", "bigint", "bigint")
# Phase 3 with the turn's usage: the UPDATE as a data-modifying CTE, the usage row inserted only if it
# matched (one statement still). $1..$N+3 as _RECORD; then the usage row's id and its columns.
_RECORD_SPENT = f"""
    WITH answer AS ({_RECORD.rstrip()}
        RETURNING id, updated_at
    )
    INSERT INTO model_usage (id, message_id, {", ".join(SPENT_COLUMNS)}, created_at)
    SELECT ${_N + 4}::uuid, answer.id,
        {", ".join(f"${n}::{t}" for n, t in enumerate(_SPENT_TYPES, start=_N + 5))}, answer.updated_at
    FROM answer
"""


def _unique_violation() -> type[Exception]:
    import asyncpg  # type: ignore[import-untyped]  # only Postgres gets here

    return asyncpg.UniqueViolationError  # type: ignore[no-any-return]


SUPERSEDED = "the user sent a new message instead"


def pending_calls(content: list[Block]) -> list[Block]:
    """The tool_use blocks of a paused answer that have no result yet."""
    answered = {b.get("tool_use_id") for b in content if b.get("type") == "tool_result"}
    return [b for b in content if b.get("type") == "tool_use" and b.get("id") not in answered]


def with_denials(content: list[Block], reason: str) -> list[Block]:
    """A paused answer's content with each of its pending calls denied, for `reason`."""
    return [*content, *(denied(call["id"], reason) for call in pending_calls(content))]


class HistoryRow(NamedTuple):
    id: uuid.UUID
    parent_id: uuid.UUID | None
    role: str
    content: Any
    status: str


def _read_history(rows: Sequence[HistoryRow], continues: Continues) -> tuple[
    list[tuple[str, Any]], list[tuple[uuid.UUID, list[Block]]], list[Block] | None
]:  # fmt: skip
    """The conversation's rows → the branch the turn continues, as (role, content) rows for the model;
    the answers paused for approval anywhere in it, superseded by the new message; a regenerated
    answer's user message (the last of its branch, sent as the turn's message).
    A compaction on the branch folds what it covers into its summary (app/turns/compaction.py)."""
    superseded: dict[uuid.UUID, list[Block]] = {}
    for row in rows:
        if row.status == MessageStatus.AWAITING_APPROVAL:
            superseded[row.id] = with_denials(_blocks(row.content), SUPERSEDED)
    if continues.regenerate is not None:
        leaf = parents(rows).get(continues.regenerate)  # its user message
    elif continues.parent is not None:
        leaf = None if continues.parent == ROOT else continues.parent
    else:
        leaf = latest_leaf(rows)
    path = branch(rows, leaf)
    content: list[Block] | None = None
    if continues.regenerate is not None and (user := next((r for r in path if r.id == leaf), None)) is not None:
        path.remove(user)  # compaction rows may sort after it
        content = _blocks(user.content)
    earlier = [(row.id, row.role, superseded.get(row.id, row.content)) for row in path]
    return fold(earlier), list(superseded.items()), content


def _blocks(content: Any) -> list[Block]:
    return list(json.loads(content) if isinstance(content, str) else content or [])


async def record_denied(tx: Tx, message_id: uuid.UUID, content: list[Block], stop_reason: str) -> bool:
    """A paused answer recorded with its pending calls denied (`content` holds the denials); False if
    it was not paused any more."""
    stmt = (
        update(Message)
        .where(Message.id == message_id, Message.status == MessageStatus.AWAITING_APPROVAL)
        .values(status=MessageStatus.COMPLETE, content=content, stop_reason=stop_reason, updated_at=utcnow())
    )
    return bool((await tx.conn.execute(stmt)).rowcount)


def _as_json(value: object) -> str | None:
    return json.dumps(value, ensure_ascii=False) if value is not None else None


class PostgresTurns:
    """The phases on Postgres: one statement each, run by asyncpg on a pooled connection."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    @staticmethod
    def _messages(conversation_id: uuid.UUID, owner_id: uuid.UUID, m: NewMessages) -> tuple[Any, ...]:
        return (conversation_id, owner_id, m.now, m.user_id, m.content, m.assistant_id, m.model, m.attributes)

    async def open_new(self, new: NewConversation) -> None:
        m = new.messages
        args = self._messages(new.opened.conversation_id, new.opening.owner_id, m)
        args += (new.title, new.system, new.agent, new.external_id, new.end_user)
        try:
            if m.earlier is None:
                await self.driver.execute(_OPEN_NEW_PLAIN, *args)
            else:
                await self.driver.execute(_OPEN_NEW_EARLIER, *args, m.user_parent, m.earlier)
        except _unique_violation() as exc:  # only a client's id can collide: another turn just opened it
            raise ConversationBusy() from exc

    async def open_existing(
        self,
        opening: Opening,
        *,
        conversation_id: uuid.UUID,
        agents: AgentFilter,
        continues: Continues = LATEST,
        read_history: bool = True,
        dequeue: uuid.UUID | None = None,
    ) -> OpenedTurn | NotOpened:
        assert read_history or continues.regenerate is None, "a regenerated answer's user message is read"
        m = NewMessages.of(opening)
        statement, *names = _open_existing(continues.mode, read_history, dequeue is not None)
        values = {
            "conversation": conversation_id, "owner": opening.owner_id, "now": m.now, "user_id": m.user_id,
            "content": m.content, "assistant_id": m.assistant_id, "model": m.model, "attributes": m.attributes,
            "agents": agents.names, "default_agent": agents.default, "parent": continues.named, "dequeue": dequeue,
        }  # fmt: skip
        rows = await self.driver.fetch(statement, *(values[name] for name in names))
        first = rows[0]  # always one row at least: the conversation's, or the reason there is none
        if first[1] is None:
            bound = first[4]
            return NotOpened(bound, message=continues.named is not None and bound in agents.names)
        if dequeue is not None and not first[8]:
            return NotOpened(first[1], unqueued=True)
        history = [HistoryRow(row[5], row[7], row[2], row[3], row[6]) for row in rows if row[2] is not None]
        earlier, superseded, content = _read_history(history, continues)
        opened = OpenedTurn(conversation_id, m.assistant_id, m.now, first[0], earlier, first[1])
        return replace(opened, superseded=superseded, content=content)

    async def record(
        self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, outcome: Outcome, spent: Spent | None = None
    ) -> None:
        o = outcome.cleaned()
        values = [_as_json(getattr(o, name)) if name in _JSONB else getattr(o, name) for name in OUTCOME_COLUMNS]
        if spent is None:
            await self.driver.execute(_RECORD, *values, utcnow(), message_id, conversation_id)
            return
        usage = (getattr(spent, name) for name in SPENT_COLUMNS)
        await self.driver.execute(_RECORD_SPENT, *values, utcnow(), message_id, conversation_id, uuid7(), *usage)


class SqliteTurns:
    """The phases on SQLite (the embedded default, one writer): no data-modifying CTEs, so the same
    steps as separate statements, in the one transaction the phase opened."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def open_new(self, new: NewConversation) -> None:
        m, conversation_id = new.messages, new.opened.conversation_id
        try:
            await self.conn.execute(
                insert(Conversation).values(
                    id=conversation_id, owner_id=new.opening.owner_id, title=new.title, system=new.system,
                    agent=new.agent, created_at=m.now, updated_at=m.now, external_id=new.external_id,
                    end_user=new.end_user,
                )
            )  # fmt: skip
        except IntegrityError as exc:  # only a client's id can collide: another turn just opened it
            raise ConversationBusy() from exc
        await self._insert_messages(conversation_id, m)

    async def open_existing(
        self,
        opening: Opening,
        *,
        conversation_id: uuid.UUID,
        agents: AgentFilter,
        continues: Continues = LATEST,
        read_history: bool = True,
        dequeue: uuid.UUID | None = None,
    ) -> OpenedTurn | NotOpened:
        assert read_history or continues.regenerate is None, "a regenerated answer's user message is read"
        m = NewMessages.of(opening)
        owned = Conversation.id == conversation_id, Conversation.owner_id == opening.owner_id
        found = (await self.conn.execute(select(Conversation.system, Conversation.agent).where(*owned))).first()
        if found is None:
            return NotOpened(None)
        agent = found.agent or agents.default
        if agent not in agents.names:
            return NotOpened(agent)
        in_conversation = Message.conversation_id == conversation_id
        asked: uuid.UUID | None = None  # a regenerated answer's user message
        if (named := continues.named) is not None and named != ROOT:
            answer = Message.id == named, in_conversation, Message.role == "assistant"
            parent = (await self.conn.execute(select(Message.parent_id).where(*answer))).first()
            if parent is None:
                return NotOpened(agent, message=True)
            if continues.regenerate is not None:
                above = parent.parent_id
                if above is None:  # a row from before branches: the message before it
                    before = select(Message.id).where(in_conversation, Message.id < named, Message.role != SUMMARY_ROLE)
                    above = (await self.conn.execute(before.order_by(Message.id.desc()).limit(1))).scalar()
                user = Message.id == above, in_conversation, Message.role == "user"
                asked = (await self.conn.execute(select(Message.id).where(*user))).scalar_one_or_none()
                if asked is None:
                    return NotOpened(agent, message=True)
        history = select(Message.id, Message.parent_id, Message.role, Message.content, Message.status)
        rows = (
            [HistoryRow(*row) for row in await self.conn.execute(history.where(in_conversation).order_by(Message.id))]
            if read_history
            else []
        )
        earlier, superseded, content = _read_history(rows, continues)
        if continues.mode == "latest":
            leaf = latest_leaf(rows) if read_history else await latest_message(self.conn, conversation_id)
            m = replace(m, user_parent=leaf)
        elif continues.parent is not None:
            m = replace(m, user_parent=continues.parent)  # ROOT stays: a first message
        if dequeue is not None:  # in the same transaction as the messages, and only if still queued
            gone = await self.conn.execute(delete(QueuedMessage).where(QueuedMessage.id == dequeue))
            if not gone.rowcount:
                return NotOpened(agent, unqueued=True)
        await self.conn.execute(update(Conversation).where(*owned).values(updated_at=m.now))
        if asked is not None:
            await self._insert_messages(conversation_id, replace(m, user_id=asked), answer_only=True)
        else:
            await self._insert_messages(conversation_id, m)
        opened = OpenedTurn(conversation_id, m.assistant_id, m.now, found.system, earlier, agent)
        return replace(opened, superseded=superseded, content=content)

    async def _insert_messages(self, conversation_id: uuid.UUID, m: NewMessages, *, answer_only: bool = False) -> None:
        """The turn's rows (and a client's history ahead of them); `answer_only`: the answer alone,
        below `m.user_id`, a user message already stored (a regenerated answer)."""
        common = {
            "conversation_id": conversation_id,
            "created_at": m.now,
            "updated_at": m.now,
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_read_tokens": 0,
            "cache_creation_tokens": 0,
        }
        user = {"id": m.user_id, "role": "user", "status": "complete", "model": None, "attributes": None}
        user |= {"content": json.loads(m.content), "parent_id": m.user_parent}
        assistant = {"id": m.assistant_id, "parent_id": m.user_id, "role": "assistant", "status": "in_progress"}
        attributes = json.loads(m.attributes) if m.attributes is not None else None
        assistant |= {"content": [], "model": m.model, "attributes": attributes}
        if answer_only:
            await self.conn.execute(insert(Message), [common | assistant])
            return
        earlier = [
            common | row | {"id": uuid.UUID(row["id"]), "status": "complete", "model": None, "attributes": None}
            for row in (json.loads(m.earlier) if m.earlier is not None else [])
        ]
        for row in earlier:
            row["parent_id"] = uuid.UUID(row["parent_id"]) if row["parent_id"] is not None else None
        await self.conn.execute(insert(Message), [*earlier, common | user, common | assistant])

    async def record(
        self, message_id: uuid.UUID, *, conversation_id: uuid.UUID, outcome: Outcome, spent: Spent | None = None
    ) -> None:
        owned = Message.id == message_id, Message.conversation_id == conversation_id
        cleaned = outcome.cleaned()
        values: dict[str, Any] = {name: getattr(cleaned, name) for name in OUTCOME_COLUMNS}
        values["error"] = values["error"] if values["error"] is not None else null()  # SQL NULL, not JSON null
        now = utcnow()
        result = await self.conn.execute(update(Message).where(*owned).values(**values, updated_at=now))
        if spent is not None and result.rowcount:  # the usage row, in the same transaction
            usage = {name: getattr(spent, name) for name in SPENT_COLUMNS}
            row = {"id": uuid7(), "message_id": message_id, "created_at": now, **usage}
            await self.conn.execute(insert(ModelUsage).values(**row))


# Where a turn continues (each indexed, each owner-scoped): the conversation of an answer, by its id
# or by the key of the exchange up to it (the most recent, should two conversations share one).
_OWNED = Conversation.id == Message.conversation_id, Conversation.owner_id == bindparam("owner_id", type_=Uuid())
_CONVERSATION_OF_ANSWER = select(Message.conversation_id).where(
    Message.id == bindparam("message_id", type_=Uuid()), Message.role == "assistant", *_OWNED
)
_ANSWER_CONTENT = select(Message.conversation_id, Message.content).where(
    Message.id == bindparam("message_id", type_=Uuid()), Message.role == "assistant", *_OWNED
)
_CONVERSATION_WITH_KEY = (
    select(Message.conversation_id, Message.id)
    .where(
        Message.history_key == bindparam("history_key"),
        *_OWNED,
        func.coalesce(Conversation.agent, bindparam("default_agent")).in_(bindparam("agents", expanding=True)),
    )
    .order_by(Message.id.desc())
    .limit(1)
)


_ANSWER_WITH_KEY = (
    select(Message.id)
    .where(
        Message.history_key == bindparam("history_key"),
        Message.conversation_id == bindparam("conversation_id", type_=Uuid()),
    )
    .order_by(Message.id.desc())
    .limit(1)
)
_CONVERSATION_WITH_EXTERNAL_ID = select(Conversation.id, Conversation.agent).where(
    Conversation.owner_id == bindparam("owner_id", type_=Uuid()), Conversation.external_id == bindparam("external_id")
)


class TurnRepository:
    """Where a turn continues when the caller does not name its conversation (both databases)."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn

    async def conversation_of_answer(self, message_id: uuid.UUID, *, owner_id: uuid.UUID) -> uuid.UUID | None:
        params = {"message_id": message_id, "owner_id": owner_id}
        return (await self.conn.execute(_CONVERSATION_OF_ANSWER, params)).scalar_one_or_none()

    async def open_calls_of_answer(
        self, message_id: uuid.UUID, *, owner_id: uuid.UUID
    ) -> tuple[uuid.UUID | None, set[str]]:
        """The answer's conversation (None: not this owner's) and its calls still without a result."""
        params = {"message_id": message_id, "owner_id": owner_id}
        row = (await self.conn.execute(_ANSWER_CONTENT, params)).first()
        if row is None:
            return None, set()
        blocks = [b for b in row.content or [] if isinstance(b, dict)]
        answered = {b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"}
        calls = {b["id"] for b in blocks if b.get("type") == "tool_use" and b.get("id") not in answered}
        return row.conversation_id, calls

    async def conversation_with_key(
        self, history_key: str, *, owner_id: uuid.UUID, agents: AgentFilter
    ) -> tuple[uuid.UUID, uuid.UUID] | None:
        """The conversation and the answer whose exchange has this key (the latest, if several do)."""
        params = {
            "history_key": history_key,
            "owner_id": owner_id,
            "agents": agents.names,
            "default_agent": agents.default,
        }
        row = (await self.conn.execute(_CONVERSATION_WITH_KEY, params)).first()
        return (row.conversation_id, row.id) if row is not None else None

    async def answer_with_key(self, history_key: str, *, conversation_id: uuid.UUID) -> uuid.UUID | None:
        """The answer of this conversation (its owner's: found by owner before) whose exchange has this key."""
        params = {"history_key": history_key, "conversation_id": conversation_id}
        return (await self.conn.execute(_ANSWER_WITH_KEY, params)).scalar_one_or_none()

    async def conversation_with_external_id(
        self, external_id: str, *, owner_id: uuid.UUID, agents: AgentFilter, rebind: str | None = None
    ) -> uuid.UUID | None:
        """The owner's conversation with the client's id; `rebind`: the agent the client now names,
        which the conversation is bound to from this turn on (a chat UI's user switched models: the
        client holds the history, so the chat follows its choice)."""
        params = {"external_id": clean_text(external_id), "owner_id": owner_id}
        found = (await self.conn.execute(_CONVERSATION_WITH_EXTERNAL_ID, params)).first()
        if found is None:
            return None
        if rebind is not None and (found.agent or agents.default) != rebind:
            owned = Conversation.id == found.id, Conversation.owner_id == owner_id
            await self.conn.execute(update(Conversation).where(*owned).values(agent=rebind))
        return found.id  # type: ignore[no-any-return]
