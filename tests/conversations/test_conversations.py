"""The conversation API: listing with cursors, history, deletion, and ownership everywhere."""

from __future__ import annotations

import httpx

from app.state import Resources
from tests.fixtures.app import make_key


async def test_list_newest_first_with_cursor_pagination(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    ids = []
    for n in range(5):
        ids.append(
            (await client.post("/chat", json={"message": f"conversation {n}"}, headers=auth)).json()["conversation_id"]
        )
    # A new turn in the oldest conversation makes it the most recent.
    await client.post("/chat", json={"message": "bump", "conversation_id": ids[0]}, headers=auth)
    expected = [ids[0], ids[4], ids[3], ids[2], ids[1]]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/conversations", params=params, headers=auth)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    bad = await client.get("/conversations", params={"cursor": "!!!"}, headers=auth)
    assert bad.status_code == 422
    assert bad.json()["error"]["type"] == "invalid_request"


async def test_delete_is_for_good(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    cid = (await client.post("/chat", json={"message": "forget me"}, headers=auth)).json()["conversation_id"]
    assert (await client.delete(f"/conversations/{cid}", headers=auth)).status_code == 204
    for path in (f"/conversations/{cid}", f"/conversations/{cid}/messages"):
        assert (await client.get(path, headers=auth)).status_code == 404
    assert (await client.delete(f"/conversations/{cid}", headers=auth)).status_code == 404
    r = await client.post("/chat", json={"message": "hello?", "conversation_id": cid}, headers=auth)
    assert r.status_code == 404


async def test_other_owners_see_nothing(client: httpx.AsyncClient, auth: dict[str, str], state: Resources) -> None:
    cid = (await client.post("/chat", json={"message": "mine"}, headers=auth)).json()["conversation_id"]
    other = {"Authorization": f"Bearer {await make_key(state, 'other')}"}
    assert (await client.get("/conversations", headers=other)).json() == {"items": [], "next_cursor": None}
    for method, path, body in [
        ("GET", f"/conversations/{cid}", None),
        ("GET", f"/conversations/{cid}/messages", None),
        ("DELETE", f"/conversations/{cid}", None),
        ("POST", "/chat", {"message": "intrude", "conversation_id": cid}),
    ]:
        r = await client.request(method, path, json=body, headers=other)
        assert r.status_code == 404, (method, path)  # not 403: existence is not revealed
        assert r.json()["error"]["type"] == "not_found"
    # Still intact for its owner.
    items = (await client.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
    assert [i["content"] for i in items] == ["mine", "echo: mine"]


async def test_messages_show_status_usage_and_errors(client: httpx.AsyncClient, auth: dict[str, str]) -> None:
    cid = (await client.post("/chat", json={"message": "fine"}, headers=auth)).json()["conversation_id"]
    failed = await client.post("/chat", json={"message": "bad [[status:529]]", "conversation_id": cid}, headers=auth)
    items = (await client.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
    assert [(i["role"], i["status"]) for i in items] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
        ("assistant", "error"),
    ]
    assert items[1]["usage"]["output_tokens"] > 0
    assert items[1]["stop_reason"] == "end_turn"
    assert items[3]["error"]["type"] == "upstream_overloaded"
    assert items[3]["error"]["request_id"] == failed.headers["x-request-id"]  # to find the logs later
    assert items[0]["usage"] is None
