"""The playground's queued messages: a message sent while a turn runs is queued (`multitask: "enqueue"`),
shown as queued until its turn starts, then answered in order."""

from __future__ import annotations

import re

from playwright.async_api import expect

from testkit.fake_llm import FakeLLMServer
from tests.helpers import Live
from tests.playground.test_playground import (  # noqa: F401 (browser: the session's Chromium, a fixture)
    Playground,
    api_messages,
    browser,
    connected,
    conversation_id_of,
    playground,
)


async def test_a_message_sent_while_a_turn_runs_is_shown_queued_then_answered(
    connected: Playground,  # noqa: F811 (a fixture)
    live: Live,
    live_key: str,
    llm_server: FakeLLMServer,
) -> None:
    page = connected.page
    await connected.send("hello")
    await connected.answer_done()

    await connected.send("Think it over [[slow:1.5]]")
    await expect(page.get_by_role("button", name="Stop")).to_be_visible()
    await connected.send("and then this")  # while the first one runs
    queued = connected.last_answer
    await expect(queued).to_have_class(re.compile(r"\bqueued\b"))
    await expect(queued.locator(".message-note")).to_have_text("Queued: answered after the message before it.")

    await expect(connected.answers).to_have_text(
        ["echo: hello", "echo: Think it over", "echo: and then this"], timeout=10_000
    )
    await expect(queued).not_to_have_class(re.compile(r"\bqueued\b"))
    await expect(queued.locator(".message-note")).to_have_count(0)
    await connected.answer_done()

    items = await api_messages(live, live_key, conversation_id_of(connected))
    assert [(m["role"], m["status"]) for m in items] == [("user", "complete"), ("assistant", "complete")] * 3
    assert llm_server.state.rejections == []
