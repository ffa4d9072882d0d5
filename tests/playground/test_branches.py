"""The playground's branches (#27): Regenerate streams a new answer in place of the old one, Edit sends
an edited message as a new branch, and a "‹ 2/3 ›" switcher on a message with siblings shows the others.
The history API holds both versions; a reload shows the current branch with its switchers."""

from __future__ import annotations

import base64
from typing import Any

from playwright.async_api import Locator, Request, expect

from testkit.fake_llm import FakeLLMServer
from tests.files import samples
from tests.helpers import Live, eventually
from tests.playground.test_attachments import DISPATCH
from tests.playground.test_playground import (  # noqa: F401 (browser: the session's Chromium, a fixture)
    Playground,
    api_messages,
    browser,
    connected,
    conversation_id_of,
    playground,
    save_screenshot,
)

ROOT = "00000000-0000-0000-0000-000000000000"
FORTY_WORDS = " ".join(f"word{n}" for n in range(1, 41))
COUNT = "Count for me [[words:40]] [[slow:0.05]]"


def user_texts(tab: Playground) -> Locator:
    return tab.page.locator("#thread .message.user .user-text")


def answer_texts(tab: Playground) -> Locator:
    return tab.page.locator("#thread .message.assistant .markdown")


def chat_bodies(tab: Playground) -> list[dict[str, Any]]:
    """The bodies the page POSTs to /chat from now on."""
    sent: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        if request.url.endswith("/chat"):
            body = request.post_data_json
            assert isinstance(body, dict)
            sent.append(body)

    tab.page.on("request", record)
    return sent


async def test_regenerate_streams_a_new_answer_and_the_switcher_shows_the_old_one(
    connected: Playground,  # noqa: F811 (a fixture)
    live: Live,
    live_key: str,
) -> None:
    page = connected.page
    await connected.send("one")
    await connected.answer_done()
    await connected.send(COUNT)
    await expect(connected.last_answer).to_contain_text("word3")
    await page.get_by_role("button", name="Stop").click()
    await connected.answer_done()
    await expect(connected.last_answer.locator(".message-note")).to_have_text("Stopped.")
    conversation_id = conversation_id_of(connected)

    async def recorded_incomplete() -> bool:
        items = await api_messages(live, live_key, conversation_id)
        return items[-1]["status"] == "incomplete"

    await eventually(recorded_incomplete, timeout=3.0)
    old_id = await connected.last_answer.get_attribute("data-id")
    assert old_id
    await expect(connected.last_answer.locator(".sibling-switcher")).to_have_count(0)  # one version only

    # The new answer streams in where the old one was; the one before it keeps its place.
    await connected.last_answer.get_by_role("button", name="Regenerate").click()
    await expect(connected.last_answer).to_contain_text("word2")
    await expect(connected.answers).to_have_count(2)
    await connected.answer_done()
    await expect(answer_texts(connected)).to_have_text(["echo: one", FORTY_WORDS])
    await expect(connected.last_answer.locator(".message-note")).to_have_count(0)
    await expect(connected.last_answer.locator(".sibling-count")).to_have_text("2/2")
    await expect(connected.last_answer.get_by_role("button", name="Next version")).to_be_disabled()
    new_id = await connected.last_answer.get_attribute("data-id")
    assert new_id
    assert new_id != old_id

    items = await api_messages(live, live_key, conversation_id)
    assert [item["content"] for item in items] == ["one", "echo: one", COUNT, FORTY_WORDS]
    assert items[-1]["id"] == new_id
    assert items[-1]["siblings"] == 1
    assert items[-1]["sibling_ids"] == [old_id, new_id]

    # ‹ shows the old answer, as stored (stopped), and › the new one again.
    await connected.last_answer.get_by_role("button", name="Previous version").click()
    await expect(connected.last_answer.locator(".sibling-count")).to_have_text("1/2")
    await expect(connected.last_answer).to_have_attribute("data-id", old_id)
    await expect(connected.last_answer.locator(".message-note")).to_have_text("Stopped.")
    assert "word40" not in await connected.last_answer.locator(".markdown").inner_text()
    await expect(connected.answers).to_have_count(2)
    await expect(connected.last_answer.get_by_role("button", name="Next version")).to_be_focused()
    await connected.last_answer.get_by_role("button", name="Next version").click()
    await expect(connected.last_answer.locator(".sibling-count")).to_have_text("2/2")
    await expect(answer_texts(connected)).to_have_text(["echo: one", FORTY_WORDS])

    # A reload shows the current branch (the latest answer) with its switcher.
    await page.reload()
    await expect(answer_texts(connected)).to_have_text(["echo: one", FORTY_WORDS])
    await expect(connected.last_answer.locator(".sibling-count")).to_have_text("2/2")
    await expect(connected.answers.first.locator(".sibling-switcher")).to_have_count(0)

    # A branch picked with the switcher survives a reload too: the address names it.
    await connected.last_answer.get_by_role("button", name="Previous version").click()
    await expect(connected.last_answer).to_have_attribute("data-id", old_id)
    assert await page.evaluate("location.hash") == f"#{conversation_id}/{old_id}"
    await page.reload()
    await expect(connected.last_answer).to_have_attribute("data-id", old_id)
    await expect(connected.last_answer.locator(".sibling-count")).to_have_text("1/2")


async def test_edit_a_message_makes_a_new_branch_that_survives_a_reload(
    connected: Playground,  # noqa: F811 (a fixture)
    live: Live,
    live_key: str,
) -> None:
    page = connected.page
    for text in ["one", "two", "three"]:
        await connected.send(text)
        await connected.answer_done()
    conversation_id = conversation_id_of(connected)
    first_answer_id = await connected.answers.first.get_attribute("data-id")
    sent = chat_bodies(connected)

    # Edit "two": inline, then Save. The thread below it is replaced by the new branch's answer.
    second = page.locator("#thread .message.user").nth(1)
    await second.get_by_role("button", name="Edit").click()
    editor = second.get_by_label("Edited text")
    await expect(editor).to_have_value("two")
    await editor.fill("TWO, edited")
    await save_screenshot(connected, "playground-edit.png")
    await second.get_by_role("button", name="Save").click()
    await connected.answer_done()
    await expect(user_texts(connected)).to_have_text(["one", "TWO, edited"])
    await expect(answer_texts(connected)).to_have_text(["echo: one", "echo: TWO, edited"])
    edited = page.locator("#thread .message.user").nth(1)
    await expect(edited.locator(".sibling-count")).to_have_text("2/2")
    await expect(connected.last_answer.locator(".sibling-switcher")).to_have_count(0)  # the new answer has none
    assert sent[-1]["parent_message_id"] == first_answer_id
    assert sent[-1]["conversation_id"] == conversation_id
    assert "multitask" not in sent[-1]

    items = await api_messages(live, live_key, conversation_id)
    assert [item["content"] for item in items] == ["one", "echo: one", "TWO, edited", "echo: TWO, edited"]
    assert items[2]["parent_id"] == first_answer_id
    assert items[2]["siblings"] == 1
    assert await edited.get_attribute("data-id") == items[2]["id"]

    # After a reload: the edited branch is the current one, and its message still has a switcher.
    await page.reload()
    await expect(user_texts(connected)).to_have_text(["one", "TWO, edited"])
    await expect(answer_texts(connected)).to_have_text(["echo: one", "echo: TWO, edited"])
    await expect(page.locator("#thread .message.user").nth(1).locator(".sibling-count")).to_have_text("2/2")
    await save_screenshot(connected, "playground-branches.png")

    # The old branch, whole, from the switcher; a message sent there continues that branch.
    await page.locator("#thread .message.user").nth(1).get_by_role("button", name="Previous version").click()
    await expect(page.locator("#thread .message.user").nth(1).locator(".sibling-count")).to_have_text("1/2")
    await expect(user_texts(connected)).to_have_text(["one", "two", "three"])
    await expect(answer_texts(connected)).to_have_text(["echo: one", "echo: two", "echo: three"])
    await connected.send("four")
    await connected.answer_done()
    await expect(answer_texts(connected)).to_have_text(["echo: one", "echo: two", "echo: three", "echo: four"])
    items = await api_messages(live, live_key, conversation_id)
    assert [item["content"] for item in items if item["role"] == "user"] == ["one", "two", "three", "four"]
    assert sent[-1]["parent_message_id"] == items[5]["id"]  # the answer on screen, not the latest message

    # An edit of the first message is a new first message (the nil UUID as its parent).
    first = page.locator("#thread .message.user").first
    await first.get_by_role("button", name="Edit").click()
    await first.get_by_label("Edited text").fill("ONE")
    await first.get_by_label("Edited text").press("Enter")
    await connected.answer_done()
    await expect(user_texts(connected)).to_have_text(["ONE"])
    await expect(answer_texts(connected)).to_have_text(["echo: ONE"])
    await expect(page.locator("#thread .message.user").first.locator(".sibling-count")).to_have_text("2/2")
    assert sent[-1]["parent_message_id"] == ROOT
    items = await api_messages(live, live_key, conversation_id)
    assert [item["content"] for item in items] == ["ONE", "echo: ONE"]
    assert items[0]["siblings"] == 1
    assert connected.page_errors == []


async def test_cancel_leaves_the_message_as_it_was(connected: Playground) -> None:  # noqa: F811 (a fixture)
    await connected.send("keep me")
    await connected.answer_done()
    user = connected.page.locator("#thread .message.user")
    await user.get_by_role("button", name="Edit").click()
    await user.get_by_label("Edited text").fill("something else")
    await user.get_by_role("button", name="Cancel").click()
    await expect(user.get_by_label("Edited text")).to_have_count(0)
    await expect(user_texts(connected)).to_have_text(["keep me"])
    await expect(user.get_by_role("button", name="Edit")).to_be_visible()
    await expect(connected.answers).to_have_count(1)


async def test_an_edited_message_keeps_its_attachments(
    connected: Playground,  # noqa: F811 (a fixture)
    llm_server: FakeLLMServer,
) -> None:
    page = connected.page
    image = samples.png(16, 16)
    await page.evaluate(DISPATCH, ["drop", "shot.png", "image/png", base64.b64encode(image).decode()])
    await expect(page.locator("#attachment-tray .attachment.uploading")).to_have_count(0)
    await connected.send("What is this?")
    await connected.answer_done()

    user = page.locator("#thread .message.user")
    await user.get_by_role("button", name="Edit").click()
    await user.get_by_label("Edited text").fill("And what colour is it?")
    await user.get_by_role("button", name="Save").click()
    await connected.answer_done()
    await expect(user_texts(connected)).to_have_text(["And what colour is it?"])
    await expect(user.locator("img.attachment-thumb")).to_have_count(1)
    await expect(answer_texts(connected)).to_have_text(["echo: And what colour is it?"])
    sent = llm_server.state.request_bodies()[-1]["messages"]
    assert len(sent) == 1  # a new first message: the old one is on the other branch
    assert [block["type"] for block in sent[0]["content"]] == ["image", "text"]
    assert sent[0]["content"][0]["source"]["data"] == base64.b64encode(image).decode()
