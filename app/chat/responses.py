"""The /chat door's wire format: a turn as one JSON body, or as a run of Server-Sent Events.

JSON: the turn executes under a watch on the client's connection (owned by the response); a
disconnect cancels it, and what was produced is recorded however it ended.

SSE: the turn is a run owned by the app's RunManager (see `TurnService.start_run`); the response
follows its events (as `GET /runs/{id}/events` does, from any replica). Events: `start`, `delta`,
`tool_use`, `tool_result`, then `end` or `error`.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.agent.loop import ToolResultEvent
from app.chat.schemas import AssistantMessageOut, ChatResponse
from app.conversations.render import tool_calls, usage_out
from app.conversations.schemas import PendingApprovalOut
from app.core.asgi import send_body, start_sse
from app.core.errors import AppError, envelope
from app.llm.base import TextDelta, ToolCall
from app.llm.summary import compaction_news
from app.runs.events import RunEvent, text_payload
from app.runs.manager import Run
from app.turns.answer import TurnJSONResponse
from app.turns.turn import ApprovalRequired, Turn, TurnEnded, TurnEvent, TurnFailed


def chat_response(turn: Turn) -> dict[str, Any]:
    """The JSON body of a finished turn, as data (what an Idempotency-Key replays)."""
    return chat_body(turn).model_dump(mode="json")


def chat_body(turn: Turn) -> ChatResponse:
    started = turn.started
    return ChatResponse(
        conversation_id=started.conversation_id,
        agent=started.agent.name,
        model=started.model,
        stop_reason=turn.stop_reason,
        message=AssistantMessageOut(
            id=started.message_id,
            content=turn.text,
            status=turn.status,
            created_at=started.created_at,
            tool_calls=tool_calls(turn.transcript.content()),
        ),
        usage=usage_out(turn.usage),
        pending_approvals=[
            PendingApprovalOut(tool_use_id=call["id"], name=call["name"], input=call.get("input") or {})
            for call in turn.pending_approvals
        ],
    )


class ChatJSONResponse(TurnJSONResponse):
    """/chat's JSON answer: the assistant message, or the error envelope."""

    def answer(self, turn: Turn, error: AppError | None) -> Response:
        if error is not None:
            return JSONResponse(envelope(error.type, error.message), error.status_code, error.headers)
        # Serialized by pydantic in one pass, not dumped to data and then encoded again.
        return Response(chat_body(turn).model_dump_json(), media_type="application/json")


class ChatEvents:
    """Publishes a turn's events on its run, named and shaped as /chat streams them."""

    def start(self, turn: Turn, run: Run) -> None:
        started = turn.started
        data = {
            "conversation_id": str(started.conversation_id),
            "message_id": str(started.message_id),
            "run_id": str(run.id),
            "agent": started.agent.name,
            "model": started.model,
        }
        run.publish("start", data)
        if started.compacted is not None:  # the history this turn sends was just compacted
            run.publish("context", started.compacted)

    def event(self, turn: Turn, event: TurnEvent, run: Run) -> None:
        if isinstance(event, TextDelta):
            run.publish("delta", {"text": event.text}, text_payload(event.text))
        elif isinstance(event, ToolCall):
            run.publish("tool_use", {"id": event.id, "name": event.name, "input": event.input})
        elif isinstance(event, ToolResultEvent):
            data = {"tool_use_id": event.tool_use_id, "content": event.content, "is_error": event.is_error}
            run.publish("tool_result", data)
        elif isinstance(event, ApprovalRequired):
            run.publish(
                "approval_required", {"tool_use_id": event.tool_use_id, "name": event.name, "input": event.input}
            )
        elif isinstance(event, TurnEnded):
            # The provider compacted this execution's context (#27; a continued pause: since it went on).
            blocks = turn.transcript.blocks[turn.resume.at if turn.resume is not None else 0 :]
            if (news := compaction_news(blocks)) is not None:
                run.publish("context", news)
            usage = usage_out(event.usage).model_dump()
            data = {"message_id": str(turn.started.message_id), "stop_reason": event.stop_reason, "usage": usage}
            run.publish("end", data)
        else:
            assert isinstance(event, TurnFailed)
            run.publish("error", envelope(event.error.type, event.error.message))

    def interrupted(self, turn: Turn, run: Run) -> None:
        if run.cancelled_by == "interrupted":  # by a newer message: its partial answer is recorded, an end
            usage = usage_out(turn.usage).model_dump()
            data = {"message_id": str(turn.started.message_id), "stop_reason": "interrupted", "usage": usage}
            run.publish("end", data)
            return
        run.publish("error", {"error": {"type": "cancelled", "message": "The run was cancelled."}})


class ReplayResponse(Response):
    """An Idempotency-Key replay of a streamed turn: the stored response as one short stream."""

    def __init__(self, stored: dict[str, Any]) -> None:
        super().__init__()
        self.stored = stored

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stored, message = self.stored, self.stored["message"]
        start = {
            "conversation_id": stored["conversation_id"],
            "message_id": message["id"],
            "agent": stored.get("agent"),
            "model": stored["model"],
            "replayed": True,
        }
        end = {"message_id": message["id"], "stop_reason": stored["stop_reason"], "usage": stored["usage"]}
        events = [
            RunEvent(1, "start", start),
            RunEvent(2, "delta", {"text": message["content"]}),
            RunEvent(3, "end", end),
        ]
        await start_sse(send)
        await send_body(send, b"".join(e.frame for e in events), more=False)
