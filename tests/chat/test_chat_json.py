"""POST /chat as JSON, against the fake Messages API through the real SDK."""

from __future__ import annotations

import uuid

import httpx
from sqlalchemy import select

from app.core.config import Settings
from app.models import Message
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from testkit.net import free_port
from tests.fixtures.app import make_key, running_app


async def stored(state: Resources, conversation_id: str) -> list[Message]:
    async with state.sessions() as session:
        rows = await session.execute(
            select(Message).where(Message.conversation_id == uuid.UUID(conversation_id)).order_by(Message.id)
        )
        return list(rows.scalars())


async def test_new_conversation_answer_is_returned_and_stored(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources
) -> None:
    r = await client.post("/chat", json={"message": "hello there"}, headers=auth)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "claude-test"
    assert body["stop_reason"] == "end_turn"
    assert body["message"]["content"] == "echo: hello there"
    assert body["message"]["status"] == "complete"
    assert body["usage"]["input_tokens"] > 0
    assert body["usage"]["output_tokens"] > 0
    rows = await stored(state, body["conversation_id"])
    assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "complete")]
    assert rows[1].content == [{"type": "text", "text": "echo: hello there"}]
    assert rows[1].input_tokens == body["usage"]["input_tokens"]

    convo = (await client.get(f"/conversations/{body['conversation_id']}", headers=auth)).json()
    assert convo["title"] == "hello there"


async def test_history_is_sent_on_the_next_turn(
    client: httpx.AsyncClient, auth: dict[str, str], llm_server: FakeLLMServer
) -> None:
    first = (await client.post("/chat", json={"message": "one", "system": "Be brief."}, headers=auth)).json()
    cid = first["conversation_id"]
    r = await client.post("/chat", json={"message": "two", "conversation_id": cid}, headers=auth)
    assert r.status_code == 200, r.text
    sent = llm_server.state.request_bodies()[-1]
    texts = [(m["role"], [b.get("text") for b in m["content"]]) for m in sent["messages"]]
    assert texts == [("user", ["one"]), ("assistant", ["echo: one"]), ("user", ["two"])]
    assert sent["system"][0]["text"] == "Be brief."
    # The stable prefix is marked for Anthropic's prompt cache.
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert sent["messages"][-2]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert r.json()["usage"]["cache_read_input_tokens"] > 0

    items = (await client.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
    assert [(i["role"], i["content"]) for i in items] == [
        ("user", "one"),
        ("assistant", "echo: one"),
        ("user", "two"),
        ("assistant", "echo: two"),
    ]


async def test_upstream_errors_map_to_statuses_and_keep_the_user_message(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources, llm_server: FakeLLMServer
) -> None:
    cases = [
        ("[[status:429]]", 429, "upstream_rate_limited", "7"),
        ("[[status:529]]", 503, "upstream_overloaded", "7"),
        ("[[status:500]]", 502, "upstream_error", None),
        ("[[status:503]]", 502, "upstream_error", None),
        ("[[status:400]]", 502, "upstream_rejected", None),
    ]
    for directive, status, type_, retry_after in cases:
        r = await client.post("/chat", json={"message": f"hi {directive}"}, headers=auth)
        assert r.status_code == status, (directive, r.text)
        error = r.json()["error"]
        assert error["type"] == type_
        assert error["request_id"] == r.headers["x-request-id"]
        if retry_after:
            assert r.headers["retry-after"] == retry_after
    convos = (await client.get("/conversations", headers=auth)).json()["items"]
    assert len(convos) == len(cases)
    for convo in convos:
        rows = await stored(state, convo["id"])
        assert [(m.role, m.status) for m in rows] == [("user", "complete"), ("assistant", "error")]
        assert rows[1].error is not None


async def test_a_failed_turn_leaves_a_usable_conversation(
    settings: Settings, client: httpx.AsyncClient, auth: dict[str, str], llm_server: FakeLLMServer
) -> None:
    cid = (await client.post("/chat", json={"message": "first"}, headers=auth)).json()["conversation_id"]
    # The same service, but its model provider cannot be reached: the turn fails with 502.
    unreachable = settings.model_copy(update={"anthropic_base_url": f"http://127.0.0.1:{free_port()}"})
    async with running_app(unreachable) as (_, _, broken):
        failed = await broken.post("/chat", json={"message": "lost?", "conversation_id": cid}, headers=auth)
    assert failed.status_code == 502
    assert failed.json()["error"]["type"] == "upstream_error"
    r = await client.post("/chat", json={"message": "again", "conversation_id": cid}, headers=auth)
    assert r.status_code == 200, r.text
    sent = llm_server.state.request_bodies()[-1]["messages"]
    # The failed turn has no answer: its user message merges into the next user turn.
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert [b["text"] for b in sent[-1]["content"]] == ["lost?", "again"]
    assert llm_server.state.rejections == []


async def test_hung_upstream_times_out_with_504(settings: Settings, llm_server: FakeLLMServer) -> None:
    from tests.fixtures.app import running_app

    quick = settings.model_copy(update={"llm_read_timeout": 0.5})
    async with running_app(quick) as (_, state, client):
        key = await make_key(state)
        r = await client.post("/chat", json={"message": "wait [[hang]]"}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "upstream_timeout"


async def test_turn_deadline_bounds_a_slow_stream(settings, llm_server: FakeLLMServer) -> None:  # type: ignore[no-untyped-def]
    from tests.fixtures.app import running_app

    quick = settings.model_copy(update={"turn_timeout": 0.6})
    async with running_app(quick) as (_, state, client):
        key = await make_key(state)
        r = await client.post(
            "/chat", json={"message": "[[delay_first:3]] slow"}, headers={"Authorization": f"Bearer {key}"}
        )
        assert r.status_code == 504, r.text
        assert r.json()["error"]["message"] == "The turn did not finish within its deadline."
    await _eventually_no_open_streams(llm_server)


async def _eventually_no_open_streams(llm_server: FakeLLMServer) -> None:
    from tests.helpers import eventually

    await eventually(lambda: llm_server.state.open_streams == 0, timeout=2)


async def test_bad_input_is_rejected_with_clear_errors(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    cases = [
        ({"message": ""}, 422),
        ({"message": "   \n"}, 422),
        ({}, 422),
        ({"message": 5}, 422),
        ({"message": "hi", "conversation_id": "not-a-uuid"}, 422),
        ({"message": "x" * 40_000}, 413),
    ]
    for payload, status in cases:
        r = await client.post("/chat", json=payload, headers=auth)
        assert r.status_code == status, (payload, r.text)
        assert set(r.json()["error"]) == {"type", "message", "request_id"}
    r = await client.post("/chat", content=b"{not json", headers={**auth, "content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "validation_error"
    # Nothing was stored by any of them.
    assert (await client.get("/conversations", headers=auth)).json()["items"] == []


async def test_unknown_conversation_is_404(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    r = await client.post("/chat", json={"message": "hi", "conversation_id": str(uuid.uuid4())}, headers=auth)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found"


async def test_system_with_an_existing_conversation_is_refused(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    first = (await client.post("/chat", json={"message": "one", "system": "Be brief."}, headers=auth)).json()
    r = await client.post(
        "/chat",
        json={"message": "two", "conversation_id": first["conversation_id"], "system": "Be verbose."},
        headers=auth,
    )
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "invalid_request"
    assert "system" in r.json()["error"]["message"]
    items = (await client.get(f"/conversations/{first['conversation_id']}/messages", headers=auth)).json()["items"]
    assert len(items) == 2  # nothing stored for the refused turn
