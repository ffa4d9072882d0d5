"""A client that leaves at any point of the agent loop leaves a conversation whose next turn works."""

from __future__ import annotations

import json

import httpx
import pytest

from testkit.fake_llm import FakeLLMServer
from tests.helpers import Live, eventually


@pytest.mark.parametrize(
    ("message", "leave_after", "stored_calls"),
    [
        # While the model is still writing its tool call: nothing ran, nothing to close.
        ('[[slow:0.2]] [[tool:sleepy {"seconds": 30}]]', "event: delta", []),
        # While the tool runs: it is cancelled, and its call is closed as interrupted.
        ('[[tool:sleepy {"seconds": 30}]]', "event: tool_use", [("sleepy", True)]),
        # After the tool, during the next model call.
        ('[[slow:0.3]] [[tool:calculator {"expression": "2+2"}]]', "event: tool_result", [("calculator", False)]),
    ],
    ids=["before-tool", "during-tool", "after-tool"],
)
async def test_leaving_mid_loop_then_next_turn(
    agent_live: Live,
    agent_key: str,
    llm_server: FakeLLMServer,
    message: str,
    leave_after: str,
    stored_calls: list[tuple[str, bool]],
) -> None:
    headers = {"Authorization": f"Bearer {agent_key}"}
    async with httpx.AsyncClient(base_url=agent_live.url, timeout=30) as http:
        cid = (await http.post("/chat", json={"message": "hello"}, headers=headers)).json()["conversation_id"]
        seen = ""
        async with http.stream(
            "POST", "/chat", headers=headers, json={"message": message, "conversation_id": cid, "stream": True}
        ) as r:
            async for chunk in r.aiter_text():
                seen += chunk
                if leave_after in seen:
                    break
        await eventually(lambda: llm_server.state.open_streams == 0, timeout=1.0)

        async def settled() -> bool:
            items = (await http.get(f"/conversations/{cid}/messages", headers=headers)).json()["items"]
            status: str = items[-1]["status"]
            return status == "incomplete"

        await eventually(settled, timeout=3.0)
        items = (await http.get(f"/conversations/{cid}/messages", headers=headers)).json()["items"]
        calls = items[-1]["tool_calls"]
        assert [(c["name"], c["is_error"]) for c in calls] == stored_calls
        if stored_calls and stored_calls[0][1]:
            assert calls[0]["result"] == "The tool call was interrupted before it returned a result."

        nxt = await http.post("/chat", json={"message": "still there?", "conversation_id": cid}, headers=headers)
        assert nxt.status_code == 200, nxt.text
        assert nxt.json()["message"]["status"] == "complete"
    assert llm_server.state.rejections == []
    engine = agent_live.state.engine
    await eventually(lambda: engine.pool.checkedout() == 0, timeout=2.0)  # type: ignore[attr-defined]
    sent = llm_server.state.request_bodies()[-1]["messages"]
    assert sent[-1]["role"] == "user"
    assert json.dumps(sent).count("tool_use_id") == json.dumps(sent).count('"type": "tool_use"')
