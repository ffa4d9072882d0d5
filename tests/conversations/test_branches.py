"""Edits and regenerated answers are branches: the old answer stays as a sibling, the history API
shows one branch at a time (any with `?leaf=`), and the model only ever sees the branch it continues."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from app.conversations.branches import ROOT, branch, latest_leaf, leaf_below, siblings
from app.core.config import Settings
from app.models import Message
from app.state import Resources
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import embedded, make_key, running_app
from tests.helpers import sse_events


def seen(llm_server: FakeLLMServer) -> list[str]:
    """The texts of the messages the model was sent on its latest call."""
    messages = llm_server.state.request_bodies()[-1]["messages"]
    texts = []
    for message in messages:
        content = message["content"]
        blocks = [content] if isinstance(content, str) else [b.get("text", "") for b in content]
        texts.append(" ".join(b for b in blocks if b))
    return texts


async def send(client: httpx.AsyncClient, auth: dict[str, str], **body: Any) -> dict[str, Any]:
    r = await client.post("/chat", json=body, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def history(client: httpx.AsyncClient, auth: dict[str, str], cid: str, leaf: str | None = None) -> Any:
    params = {"leaf": leaf} if leaf else {}
    r = await client.get(f"/conversations/{cid}/messages", params=params, headers=auth)
    assert r.status_code == 200, r.text
    return r.json()


async def count_messages(state: Resources) -> int:
    async with state.db.statement() as conn:
        return int((await conn.execute(select(func.count()).select_from(Message))).scalar_one())


async def branches_work(client: httpx.AsyncClient, auth: dict[str, str], llm_server: FakeLLMServer) -> None:
    first = await send(client, auth, message="one")
    cid = first["conversation_id"]
    a1 = first["message"]["id"]
    a2 = (await send(client, auth, message="two", conversation_id=cid))["message"]["id"]

    # Regenerate: a new answer to "two", the model sees the same branch; the old answer is its sibling.
    r = await client.post(f"/conversations/{cid}/messages/{a2}/regenerate", headers=auth)
    assert r.status_code == 200, r.text
    a2b = r.json()["message"]["id"]
    assert r.json()["message"]["content"] == "echo: two"
    assert seen(llm_server) == ["one", "echo: one", "two"]
    page = await history(client, auth, cid)
    assert [i["id"] for i in page["items"]][-1] == a2b
    assert page["leaf_id"] == a2b
    assert [i["content"] for i in page["items"]] == ["one", "echo: one", "two", "echo: two"]
    user2 = page["items"][2]
    assert page["items"][3]["parent_id"] == user2["id"]
    assert page["items"][3]["siblings"] == 1
    assert page["items"][3]["sibling_ids"] == [a2, a2b]
    assert page["items"][0]["parent_id"] is None
    assert page["items"][0]["siblings"] == 0
    assert [i["id"] for i in (await history(client, auth, cid, leaf=a2))["items"]][-1] == a2

    # Edit "two": a new user message below the answer before it; the model never sees "two".
    edited = await send(client, auth, message="TWO", conversation_id=cid, parent_message_id=a1)
    assert seen(llm_server) == ["one", "echo: one", "TWO"]
    page = await history(client, auth, cid)
    assert [i["content"] for i in page["items"]] == ["one", "echo: one", "TWO", "echo: TWO"]
    assert page["items"][2]["sibling_ids"] == [user2["id"], page["items"][2]["id"]]
    # The next message continues the latest branch by default.
    await send(client, auth, message="three", conversation_id=cid)
    assert seen(llm_server) == ["one", "echo: one", "TWO", "echo: TWO", "three"]
    # ?leaf= through an older message shows its branch down to that branch's latest answer.
    old = await history(client, auth, cid, leaf=user2["id"])
    assert [i["content"] for i in old["items"]] == ["one", "echo: one", "two", "echo: two"]
    assert old["leaf_id"] == a2b

    # Continue the old branch from its first answer; and start over with the nil UUID.
    await send(client, auth, message="after two", conversation_id=cid, parent_message_id=a2)
    assert seen(llm_server) == ["one", "echo: one", "two", "echo: two", "after two"]
    await send(client, auth, message="fresh start", conversation_id=cid, parent_message_id=str(ROOT))
    assert seen(llm_server) == ["fresh start"]
    page = await history(client, auth, cid)
    assert [i["content"] for i in page["items"]] == ["fresh start", "echo: fresh start"]
    assert page["items"][0]["siblings"] == 1  # beside "one"
    assert edited["message"]["id"] != a2b


async def test_regenerate_and_edit_make_branches(
    client: httpx.AsyncClient, auth: dict[str, str], llm_server: FakeLLMServer
) -> None:
    await branches_work(client, auth, llm_server)
    assert llm_server.state.rejections == []


async def test_branches_on_the_embedded_default(tmp_path: Path, settings: Settings, llm_server: FakeLLMServer) -> None:
    lite = await embedded(settings, tmp_path / "b.db")
    async with running_app(lite) as (_, state, client):
        await branches_work(client, {"Authorization": f"Bearer {await make_key(state)}"}, llm_server)
    assert llm_server.state.rejections == []


async def test_regenerate_streams_and_runs_on_another_replica(
    settings: Settings, llm_server: FakeLLMServer, client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    first = await send(client, auth, message="hello")
    cid, a1 = first["conversation_id"], first["message"]["id"]
    async with running_app(settings) as (_, _, other):  # a second replica on the same database and Redis
        r = await other.post(
            f"/conversations/{cid}/messages/{a1}/regenerate", json={"stream": True}, headers=auth, timeout=10
        )
        assert r.status_code == 200, r.text
        events = sse_events(r.text)
        assert [e["event"] for e in events][0] == "start"
        assert events[-1]["event"] == "end"
        page = await history(other, auth, cid)
    assert [i["content"] for i in page["items"]] == ["hello", "echo: hello"]
    assert page["items"][1]["siblings"] == 1
    assert page["items"][1]["id"] != a1
    assert seen(llm_server) == ["hello"]


async def test_bad_branch_requests_store_nothing(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources
) -> None:
    first = await send(client, auth, message="mine")
    cid, a1 = first["conversation_id"], first["message"]["id"]
    elsewhere = await send(client, auth, message="another conversation")
    other_auth = {"Authorization": f"Bearer {await make_key(state, 'other')}"}
    page = await history(client, auth, cid)
    user = page["items"][0]["id"]
    before = await count_messages(state)
    cases = [
        # An answer of another conversation, a user message, an unknown id: 404, nothing stored.
        ("/chat", {"message": "x", "conversation_id": cid, "parent_message_id": elsewhere["message"]["id"]}, 404),
        ("/chat", {"message": "x", "conversation_id": cid, "parent_message_id": user}, 404),
        ("/chat", {"message": "x", "conversation_id": cid, "parent_message_id": str(uuid.uuid4())}, 404),
        ("/chat", {"message": "x", "parent_message_id": a1}, 422),
        ("/chat", {"message": "x", "conversation_id": cid, "parent_message_id": a1, "multitask": "enqueue"}, 422),
        (f"/conversations/{cid}/messages/{user}/regenerate", None, 404),
        (f"/conversations/{cid}/messages/{uuid.uuid4()}/regenerate", None, 404),
        (f"/conversations/{cid}/messages/{elsewhere['message']['id']}/regenerate", None, 404),
    ]
    for path, body, status in cases:
        r = await client.post(path, json=body, headers=auth)
        assert r.status_code == status, (path, body, r.text)
        assert r.json()["error"]["type"] in ("not_found", "invalid_request")
    r = await client.post(f"/conversations/{cid}/messages/{a1}/regenerate", headers=other_auth)
    assert r.status_code == 404  # another owner's conversation
    r = await client.get(f"/conversations/{cid}/messages", params={"leaf": str(uuid.uuid4())}, headers=auth)
    assert r.status_code == 404
    assert await count_messages(state) == before


@dataclass
class N:
    id: uuid.UUID
    parent_id: uuid.UUID | None
    role: str


def test_a_compaction_belongs_to_the_branches_through_its_message() -> None:
    ids = [uuid.UUID(int=n) for n in range(1, 12)]
    u1, a1, u2, a2, summary, u3, a3, u2b, a2b, u3c, a3c = ids
    rows = [
        N(u1, None, "user"),
        N(a1, u1, "assistant"),
        N(u2, a1, "user"),
        N(a2, u2, "assistant"),
        N(summary, a2, "summary"),  # computed at a2
        N(u3, a2, "user"),
        N(a3, u3, "assistant"),
        N(u2b, a1, "user"),  # an edit of u2
        N(a2b, u2b, "assistant"),
        N(u3c, a2, "user"),  # a branch from a2, after the edit
        N(a3c, u3c, "assistant"),
    ]
    assert latest_leaf(rows) == a3c
    assert [r.id for r in branch(rows, a3)] == [u1, a1, u2, a2, summary, u3, a3]
    assert [r.id for r in branch(rows, a2b)] == [u1, a1, u2b, a2b]  # the summary is not on this branch
    assert [r.id for r in branch(rows, None)] == []
    assert leaf_below(rows, u2) == a3c
    assert leaf_below(rows, u2b) == a2b
    assert leaf_below(rows, a3) == a3
    groups = siblings(rows)
    assert groups[a1] == [u2, u2b]
    assert groups[a2] == [u3, u3c]
    assert groups[None] == [u1]


async def test_rows_without_parents_read_as_one_branch(
    client: httpx.AsyncClient, auth: dict[str, str], state: Resources, llm_server: FakeLLMServer
) -> None:
    """Rows from before branches, or written by a replica still on the old code during a rolling
    deploy, have no parent: each follows the one before it, so nothing before them is cut off."""
    from sqlalchemy import update

    first = await send(client, auth, message="one")
    cid = first["conversation_id"]
    await send(client, auth, message="two", conversation_id=cid)
    await send(client, auth, message="three", conversation_id=cid)
    async with state.db.statement() as conn:
        await conn.execute(update(Message).where(Message.conversation_id == uuid.UUID(cid)).values(parent_id=None))
    page = await history(client, auth, cid)
    assert [i["content"] for i in page["items"]] == ["one", "echo: one", "two", "echo: two", "three", "echo: three"]
    assert [i["parent_id"] for i in page["items"]] == [None, *(i["id"] for i in page["items"][:-1])]
    answers = [i["id"] for i in page["items"] if i["role"] == "assistant"]
    await send(client, auth, message="four", conversation_id=cid)
    assert seen(llm_server) == ["one", "echo: one", "two", "echo: two", "three", "echo: three", "four"]
    r = await client.post(f"/conversations/{cid}/messages/{answers[1]}/regenerate", headers=auth)
    assert r.status_code == 200, r.text
    assert seen(llm_server) == ["one", "echo: one", "two"]
    await send(client, auth, message="2!", conversation_id=cid, parent_message_id=answers[0])
    assert seen(llm_server) == ["one", "echo: one", "2!"]
    groups = {i["content"]: i["siblings"] for i in (await history(client, auth, cid))["items"]}
    assert groups == {"one": 0, "echo: one": 0, "2!": 1, "echo: 2!": 0}
