"""A turn paused for approval on a replica that is then killed (SIGKILL): nothing was held, so another
replica continues it as if nothing happened, and the history stays valid for the model."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
from sqlalchemy import select

from app.core.config import Settings
from app.main import create_app
from app.models import Message
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import live_server, sse_events
from tests.resilience.server import ServerProcess

CALC = '[[tool:calculator {"expression": "2+2"}]] [[tool:current_time {"timezone": "UTC"}]] compute'


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_pause_on_a_killed_replica_is_approved_on_another(
    settings: Settings, tmp_path: Path, llm_server: FakeLLMServer
) -> None:
    settings = settings.model_copy(update={"agent_approval_tools": "calculator"})
    doomed = ServerProcess(settings, tmp_path / "doomed.log")
    await doomed.start(AGENT_APPROVAL_TOOLS="calculator")
    try:
        async with live_server(create_app(settings)) as survivor, httpx.AsyncClient(timeout=30) as http:
            key = await make_key(survivor.state)
            r = await http.post(f"{doomed.url}/chat", json={"message": CALC, "stream": True}, headers=auth(key))
            events = sse_events(r.text)
            [required] = [e["data"] for e in events if e["event"] == "approval_required"]
            assert events[-1]["data"]["stop_reason"] == "awaiting_approval"
            start = events[0]["data"]
            conversation_id, message_id = start["conversation_id"], start["message_id"]
            doomed.kill()  # SIGKILL: whatever it held would stay held until a TTL; a pause holds nothing

            history = await http.get(f"{survivor.url}/conversations/{conversation_id}/messages", headers=auth(key))
            paused = history.json()["items"][-1]
            assert paused["status"] == "awaiting_approval"
            assert [p["tool_use_id"] for p in paused["pending_approvals"]] == [required["tool_use_id"]]

            decisions = {
                "decisions": [
                    {"tool_use_id": required["tool_use_id"], "approve": True, "input": {"expression": "5*5"}}
                ],
                "stream": True,
            }
            go = await http.post(
                f"{survivor.url}/conversations/{conversation_id}/approvals", json=decisions, headers=auth(key)
            )
            assert go.status_code == 200, go.text
            more = sse_events(go.text)
            assert more[0]["data"]["message_id"] == message_id  # the same answer, continued
            assert more[0]["data"]["run_id"] != start["run_id"]  # by a run of its own
            assert [e["data"]["content"] for e in more if e["event"] == "tool_result"] == ["25"]
            assert more[-1]["event"] == "end"
            assert more[-1]["data"]["stop_reason"] == "end_turn"

            async with survivor.state.sessions() as session:
                row = (await session.execute(select(Message).where(Message.id == uuid.UUID(message_id)))).scalar_one()
            assert row.status == "complete"
            calls = {b["name"]: b for b in row.content if b.get("type") == "tool_use"}
            assert calls["calculator"]["input"] == {"expression": "5*5"}  # the stored call is what ran

            # The next turn, on the survivor, takes the conversation's lock at once and its history is valid.
            after = await http.post(
                f"{survivor.url}/chat",
                json={"message": "and now?", "conversation_id": conversation_id},
                headers=auth(key),
            )
            assert after.status_code == 200, after.text
            assert llm_server.state.rejections == []
    finally:
        doomed.kill()
