"""A second message while a turn runs (`multitask`): `interrupt` stops the running turn, wherever it runs.

The running turn holds the conversation's lock. Its answer is the conversation's assistant message
still `in_progress`; its run (a stream, a background response) is found by that id (or, for a
continuation after approvals, the id derived from it), a turn answered as JSON by the answer's id
itself: RunManager.cancel reaches either on this replica or, through the cancel channel, on any
other. The interrupted turn records its partial answer (`incomplete`, stop reason `interrupted`)
and frees the lock, which this turn then takes.
"""

from __future__ import annotations

import uuid

import structlog
from sqlalchemy import select

from app.models import Conversation, Message
from app.models.conversations import MessageStatus
from app.state import Resources
from app.turns.approvals import continuation_run_id

log = structlog.get_logger(__name__)

INTERRUPTED = "interrupted"
# Long enough for the interrupted turn to record its answer (its phase 3) and free the lock.
WAIT_SECONDS = 10.0
POLL_SECONDS = 0.05
RETRY_CANCEL_SECONDS = 0.5  # the running answer looked up again (it may not have been stored yet)


async def running_run(resources: Resources, owner_id: uuid.UUID, conversation_id: uuid.UUID) -> uuid.UUID | None:
    """The run id (or JSON turn's answer id) of the conversation's answer in progress, if any."""
    query = (
        select(Message.id, Message.attributes)
        .join(Conversation, Conversation.id == Message.conversation_id)
        .where(
            Message.conversation_id == conversation_id,
            Conversation.owner_id == owner_id,
            Message.role == "assistant",
            Message.status == MessageStatus.IN_PROGRESS,
        )
        .order_by(Message.id.desc())
        .limit(1)
    )
    async with resources.db.statement() as conn:
        row = (await conn.execute(query)).first()
    if row is None:
        return None
    continued = len((row.attributes or {}).get("resumptions") or [])
    return continuation_run_id(row.id, continued) if continued else row.id


async def cancel_running(
    resources: Resources, owner_id: uuid.UUID, conversation_id: uuid.UUID, done: set[uuid.UUID]
) -> None:
    """Interrupt the conversation's running turn, wherever it runs (once per run: `done` keeps them)."""
    run_id = await running_run(resources, owner_id, conversation_id)
    if run_id is not None and run_id not in done:
        done.add(run_id)
        log.info("chat.turn.interrupting", conversation_id=str(conversation_id), run_id=str(run_id))
        await resources.runs.cancel(run_id, INTERRUPTED)
