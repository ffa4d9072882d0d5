"""POST /chat as Server-Sent Events, over a real socket so disconnects are real."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select

from app.models import Message
from testkit.fake_llm import FakeLLMServer
from tests.helpers import Live, eventually, pg_activity, sse_events


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def assistant_row(live: Live, message_id: str) -> Message:
    async with live.state.sessions() as session:
        row = (await session.execute(select(Message).where(Message.id == uuid.UUID(message_id)))).scalar_one()
    return row


async def test_stream_events_in_order(live: Live, live_key: str) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post("/chat", json={"message": "hello stream", "stream": True}, headers=bearer(live_key))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-request-id"]
    events = sse_events(r.text)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    assert set(kinds[1:-1]) == {"delta"}
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert "".join(e["data"]["text"] for e in events if e["event"] == "delta") == "echo: hello stream"
    start, end = events[0]["data"], events[-1]["data"]
    assert end["message_id"] == start["message_id"]
    assert end["stop_reason"] == "end_turn"
    assert end["usage"]["output_tokens"] > 0
    row = await assistant_row(live, start["message_id"])
    assert row.status == "complete"
    assert row.content == [{"type": "text", "text": "echo: hello stream"}]


async def test_accept_header_selects_streaming(live: Live, live_key: str) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        r = await http.post(
            "/chat", json={"message": "hi"}, headers={**bearer(live_key), "Accept": "text/event-stream"}
        )
    assert [e["event"] for e in sse_events(r.text)][0] == "start"


async def test_error_after_stream_started_is_an_error_event(live: Live, live_key: str) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        for directive, type_ in [
            ("[[midstream_error]]", "upstream_overloaded"),
            ("[[drop]]", "upstream_error"),
            ("[[status:429]]", "upstream_rate_limited"),
        ]:
            r = await http.post("/chat", json={"message": f"x {directive}", "stream": True}, headers=bearer(live_key))
            events = sse_events(r.text)
            assert events[-1]["event"] == "error", directive
            assert events[-1]["data"]["error"]["type"] == type_
            assert events[-1]["data"]["error"]["request_id"] == r.headers["x-request-id"]
            row = await assistant_row(live, events[0]["data"]["message_id"])
            assert row.status == "error"
            partial = "".join(e["data"]["text"] for e in events if e["event"] == "delta")
            # Whatever reached the client is kept with the error.
            assert (row.content[0]["text"] if row.content else "") == partial


async def test_client_disconnect_closes_upstream_and_records_partial(
    live: Live, live_key: str, llm_server: FakeLLMServer, app_name: str
) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        async with http.stream(
            "POST", "/chat", json={"message": "[[words:500]] [[slow:0.02]]", "stream": True}, headers=bearer(live_key)
        ) as r:
            seen = ""
            async for chunk in r.aiter_text():
                seen += chunk
                if seen.count("event: delta") >= 5:
                    break  # leaving the block closes the connection mid-stream
    message_id = sse_events(seen)[0]["data"]["message_id"]
    # The upstream stream is closed promptly (no paying for tokens nobody reads).
    await eventually(lambda: llm_server.state.open_streams == 0, timeout=1.0)
    assert llm_server.state.closed_by_client >= 1

    async def recorded() -> bool:
        return (await assistant_row(live, message_id)).status == "incomplete"

    await eventually(recorded, timeout=2.0)
    row = await assistant_row(live, message_id)
    assert row.content[0]["text"].startswith("word1 word2")
    engine = live.state.engine
    await eventually(lambda: engine.pool.checkedout() == 0, timeout=2.0)  # type: ignore[attr-defined]
    activity = await pg_activity(live.state.sessions, app_name)
    assert "idle in transaction" not in activity


async def test_next_turn_after_a_disconnect_is_valid(live: Live, live_key: str, llm_server: FakeLLMServer) -> None:
    async with httpx.AsyncClient(base_url=live.url) as http:
        first = (await http.post("/chat", json={"message": "start"}, headers=bearer(live_key))).json()
        cid = first["conversation_id"]
        # Leave before the first token arrives, then mid-stream.
        for directive in ["[[delay_first:0.5]]", "[[words:200]] [[slow:0.02]]"]:
            async with http.stream(
                "POST",
                "/chat",
                json={"message": directive, "stream": True, "conversation_id": cid},
                headers=bearer(live_key),
            ) as r:
                async for chunk in r.aiter_text():
                    if "event: start" in chunk and "delay_first" in directive:
                        break
                    if chunk.count("event: delta") or "event: delta" in chunk:
                        break

            async def recorded() -> bool:
                # The conversation stays busy (409) until the left turn is recorded: wait for that.
                r = await http.get(f"/conversations/{cid}/messages", headers=bearer(live_key))
                status: str = r.json()["items"][-1]["status"]
                return status != "in_progress"

            await eventually(recorded, timeout=3.0)
        await eventually(lambda: llm_server.state.open_streams == 0, timeout=2.0)
        r = await http.post("/chat", json={"message": "and now?", "conversation_id": cid}, headers=bearer(live_key))
        assert r.status_code == 200, r.text
        items = (await http.get(f"/conversations/{cid}/messages", headers=bearer(live_key))).json()["items"]
    assert [i["role"] for i in items] == ["user", "assistant"] * 4
    assert [i["status"] for i in items[1::2]] == ["complete", "incomplete", "incomplete", "complete"]
    assert llm_server.state.rejections == []
    last_sent = llm_server.state.request_bodies()[-1]["messages"]
    assert last_sent[-1]["role"] == "user"
    assert all(b.get("text", "x").strip() for m in last_sent for b in m["content"])
