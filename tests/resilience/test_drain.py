"""Graceful drain: readiness first, new turns refused, in-flight turns finish or end as `shutdown`."""

from __future__ import annotations

import asyncio

import httpx

from app.core.config import Settings
from app.main import create_app
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import eventually, live_server, sse_events


async def test_drain_lets_short_turns_finish_and_interrupts_long_ones(
    settings: Settings, llm_server: FakeLLMServer
) -> None:
    async with live_server(create_app(settings.model_copy(update={"shutdown_grace_seconds": 1.0}))) as live:
        key = await make_key(live.state)
        headers = {"Authorization": f"Bearer {key}"}
        lifecycle = live.state.lifecycle
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:

            async def turn(message: str, stream: bool) -> httpx.Response:
                return await http.post("/chat", json={"message": message, "stream": stream}, headers=headers)

            short = asyncio.create_task(turn("[[words:5]] [[slow:0.1]]", True))
            long_stream = asyncio.create_task(turn("[[words:500]] [[slow:0.05]]", True))
            long_json = asyncio.create_task(turn("[[delay_first:30]] never in time", False))
            await eventually(lambda: lifecycle.in_flight == 3)
            lifecycle.begin_drain()

            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["type"] == "shutdown"
            refused = await turn("too late", False)
            assert refused.status_code == 503
            assert refused.json()["error"]["type"] == "shutdown"
            assert refused.headers["retry-after"] == "1"

            short_events = sse_events((await short).text)
            assert short_events[-1]["event"] == "end"
            long_events = sse_events((await long_stream).text)
            assert long_events[-1]["event"] == "error"
            assert long_events[-1]["data"]["error"]["type"] == "shutdown"
            partial = "".join(e["data"]["text"] for e in long_events if e["event"] == "delta")
            assert partial.startswith("word1")
            json_answer = await long_json
            assert json_answer.status_code == 503
            assert json_answer.json()["error"]["type"] == "shutdown"

            items = []
            for conversation in (await http.get("/conversations", headers=headers)).json()["items"]:
                items += (await http.get(f"/conversations/{conversation['id']}/messages", headers=headers)).json()[
                    "items"
                ]
        by_text = {i["content"]: i for i in items if i["role"] == "assistant"}
        assert by_text[partial]["status"] == "incomplete"
        assert by_text[partial]["error"]["type"] == "shutdown"
        statuses = sorted(i["status"] for i in items if i["role"] == "assistant")
        assert statuses == ["complete", "incomplete", "incomplete"]
        await eventually(lambda: llm_server.state.open_streams == 0, timeout=1.0)
