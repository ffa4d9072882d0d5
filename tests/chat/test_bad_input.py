"""Input Postgres cannot store (NUL, lone surrogates), bodies that are not UTF-8, absurd event ids:
a clear 422 in the envelope, declared in the schema; text the service produced is cleaned instead."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import BaseModel
from sqlalchemy import func, select

from app.agent.tools.base import Tool, ToolContext
from app.core.config import Settings
from app.main import create_app
from app.models import Conversation, Message
from app.state import Resources
from tests.fixtures.app import lifespan_in_task, make_key
from tests.helpers import sse_events

# (body, field, words of the message): a lone surrogate is refused by pydantic itself, a NUL by us.
NUL_AND_SURROGATE = [
    ('{"message": "a\\u0000b"}', "message", "NUL"),
    ('{"message": "a\\ud800b"}', "message", "unicode"),
    ('{"message": "a\\udfffb"}', "message", "unicode"),
    ('{"message": "hi", "system": "be\\u0000brief"}', "system", "NUL"),
    ('{"message": "hi", "system": "\\udc00"}', "system", "unicode"),
]


async def conversations(state: Resources) -> int:
    async with state.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Conversation)) or 0)


@pytest.mark.parametrize(("body", "field", "what"), NUL_AND_SURROGATE)
async def test_nul_or_a_lone_surrogate_is_a_clear_422(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources, body: str, field: str, what: str
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    r = await client.post("/chat", content=body.encode(), headers=headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "validation_error"
    assert error["message"].startswith(f"{field}: ")
    assert what in error["message"]
    assert error["request_id"] == r.headers["x-request-id"]
    assert await conversations(state) == 0  # nothing was stored
    # A valid surrogate pair is one character (U+1F600), and welcome.
    ok = await client.post("/chat", content=b'{"message": "smile \\ud83d\\ude00"}', headers=headers)
    assert ok.status_code == 200, ok.text
    assert ok.json()["message"]["content"] == "echo: smile \U0001f600"


async def test_a_lone_surrogate_sent_raw_is_refused_too(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    # ED A0 80 is U+D800 encoded as if it were a character; json.loads lets it through as one.
    body = b'{"message": "a\xed\xa0\x80b"}'
    r = await client.post("/chat", content=body, headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "validation_error"


@pytest.mark.parametrize("body", [b'{"message": "caf\xe9"}', b"\xff\xfe{", b'{"message": "\xc3"}'])
async def test_a_body_that_is_not_utf8_is_the_same_422_as_bad_json(
    client: httpx.AsyncClient, auth: dict[str, str], body: bytes
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    r = await client.post("/chat", content=body, headers=headers)
    assert r.status_code == 422, r.text  # FastAPI's own answer is a bare, undeclared 400
    assert r.json()["error"] == {
        "type": "validation_error",
        "message": "body: not valid UTF-8 JSON.",
        "request_id": r.headers["x-request-id"],
    }
    malformed = await client.post("/chat", content=b'{"message": ', headers=headers)
    assert malformed.status_code == 422
    assert malformed.json()["error"]["type"] == "validation_error"


async def test_the_schema_declares_the_envelope_for_every_422(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    assert "HTTPValidationError" not in json.dumps(schema)
    chat = schema["paths"]["/chat"]["post"]["responses"]["422"]
    assert chat["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorEnvelope"}
    events = schema["paths"]["/runs/{run_id}/events"]["get"]
    assert events["responses"]["422"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorEnvelope")
    header = next(p for p in events["parameters"] if p["name"] == "Last-Event-ID")
    assert header["schema"]["anyOf"][0]["pattern"] == "^[0-9]{1,15}$"
    # The bearer scheme is declared, so clients (and API testers) know every route but health needs a key.
    assert schema["components"]["securitySchemes"]["HTTPBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `Authorization: Bearer ak_…`.",
    }
    assert schema["paths"]["/chat"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in schema["paths"]["/readyz"]["get"]


@pytest.mark.parametrize("last_event_id", ["١٢٣", "²", "9" * 5000, "-1", "1e3"])
async def test_a_last_event_id_that_is_not_ours_is_a_422(
    client: httpx.AsyncClient, auth: dict[str, str], last_event_id: str
) -> None:
    streamed = await client.post("/chat", json={"message": "hi", "stream": True}, headers=auth)
    run_id = sse_events(streamed.text)[0]["data"]["run_id"]
    url = f"/runs/{run_id}/events"
    raw = {name.encode(): value.encode() for name, value in auth.items()}
    r = await client.get(url, headers={**raw, b"Last-Event-ID": last_event_id.encode()})  # as UTF-8 bytes
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "validation_error"
    assert "Last-Event-ID" in r.json()["error"]["message"]
    assert (await client.get(url, params={"after": 10**20}, headers=auth)).status_code == 422
    # Our own ids still work.
    rest = sse_events((await client.get(url, headers={**auth, "Last-Event-ID": "1"})).text)
    assert rest[0]["id"] == "2"
    assert rest[-1]["event"] == "end"


class Url(BaseModel):
    url: str


async def _page(data: Url, _: ToolContext) -> str:
    # What a fetched page can hold: a NUL and a lone surrogate (from a decoder's surrogateescape).
    return f"page of {data.url}: a\x00b \udce9 end"


PAGE = Tool("page", "Fetches a page.", Url, _page)


@pytest.fixture
async def page_client(settings: Settings) -> AsyncIterator[tuple[Resources, httpx.AsyncClient]]:
    app = create_app(settings, extra_tools=[PAGE])
    async with lifespan_in_task(app) as state:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=30) as client:
            yield state, client


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_and_model_text_postgres_refuses_are_cleaned_and_the_answer_is_stored(
    page_client: tuple[Resources, httpx.AsyncClient], stream: bool
) -> None:
    state, client = page_client
    auth = {"Authorization": f"Bearer {await make_key(state)}"}
    # The model's tool input carries a NUL too (a JSON escape the fake decodes).
    message = '[[tool:page {"url": "http://x.test/a\\u0000b"}]] read it'
    r = await client.post("/chat", json={"message": message, "stream": stream}, headers=auth)
    assert r.status_code == 200, r.text
    if stream:
        events = sse_events(r.text)
        assert events[-1]["event"] == "end", events[-1]
        result = next(e for e in events if e["event"] == "tool_result")["data"]
        assert result["content"] == "page of http://x.test/ab: ab \ufffd end"
        conversation_id = events[0]["data"]["conversation_id"]
    else:
        assert r.json()["message"]["status"] == "complete"
        conversation_id = r.json()["conversation_id"]
    async with state.sessions() as session:
        rows = (
            await session.execute(
                select(Message).where(Message.conversation_id == uuid.UUID(conversation_id)).order_by(Message.id)
            )
        ).scalars()
        answer = list(rows)[-1]
    assert answer.status == "complete"  # not left `in_progress` by a failed record
    tool_use = next(b for b in answer.content if b["type"] == "tool_use")
    assert tool_use["input"] == {"url": "http://x.test/ab"}
    tool_result = next(b for b in answer.content if b["type"] == "tool_result")
    assert tool_result["content"] == "page of http://x.test/ab: ab \ufffd end"
    assert answer.content[-1]["text"] == "tool results: page of http://x.test/ab: ab \ufffd end"


@pytest.mark.parametrize(
    "at",
    [
        "0001-01-01T00:00:00+14:00",  # a valid datetime whose UTC instant Postgres cannot take: was a 500
        "2026-01-01T00:00:00",  # no offset: never one of ours
    ],
)
async def test_a_forged_cursor_is_a_422(client: httpx.AsyncClient, auth: dict[str, str], at: str) -> None:
    cursor = base64.urlsafe_b64encode(f"{at}|{uuid.uuid4()}".encode()).decode()
    r = await client.get("/conversations", params={"cursor": cursor}, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request"
