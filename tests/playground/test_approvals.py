"""The playground's approval cards: a paused turn's pending calls, decided in the page (approve, deny with a
reason, edit the arguments), live and after a reload; the continuation streams into the same answer."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, expect

from app.core.config import Settings
from app.main import create_app
from tests.fixtures.app import make_key
from tests.helpers import Live, live_server
from tests.playground.test_playground import (  # noqa: F401 (browser: the session's Chromium, a fixture)
    Playground,
    api_messages,
    browser,
    conversation_id_of,
    open_tab,
    save_screenshot,
)

CALC = 'Work it out [[tool:calculator {"expression": "2+2"}]] [[tool:current_time {"timezone": "UTC"}]]'


@pytest.fixture
async def gated_live(settings: Settings) -> AsyncIterator[Live]:
    async with live_server(create_app(settings.model_copy(update={"agent_approval_tools": "calculator"}))) as live:
        yield live


@pytest.fixture
async def gated_key(gated_live: Live) -> str:
    return await make_key(gated_live.state)


@pytest.fixture
async def tab(browser: Browser, gated_live: Live, gated_key: str) -> AsyncIterator[Playground]:  # noqa: F811
    async with open_tab(browser, gated_live) as opened:
        await opened.connect(gated_key)
        yield opened


async def test_an_approval_card_edits_and_approves_and_the_answer_goes_on(
    tab: Playground, gated_live: Live, gated_key: str
) -> None:
    await tab.send(CALC)
    await tab.answer_done()
    card = tab.last_answer.locator(".approval-card")
    await expect(card).to_have_count(1)
    await expect(card.locator(".approval-name")).to_have_text("calculator")
    await expect(card.locator(".approval-args")).to_have_text('{\n  "expression": "2+2"\n}')
    calls = tab.last_answer.locator("details.tool-card")
    await expect(calls.locator(".tool-status")).to_have_text(["needs approval", "done"])  # the other call ran
    await save_screenshot(tab, "playground-approval.png")

    await card.get_by_role("button", name="Edit").click()
    editor = card.get_by_label("Arguments for calculator (JSON)")
    await editor.fill("[1, 2]")
    await card.get_by_role("button", name="Approve edited").click()
    await expect(card.locator(".approval-problem")).to_have_text("The arguments must be a JSON object.")
    await editor.fill('{"expression": "3+3"}')
    await card.get_by_role("button", name="Approve edited").click()
    await tab.answer_done()
    await expect(card.locator(".approval-outcome")).to_have_text("Approved with edited arguments")
    await expect(card.locator(".approval-args")).to_have_text('{\n  "expression": "3+3"\n}')
    await expect(card.get_by_role("button", name="Deny")).to_be_hidden()
    await expect(calls.locator(".tool-status")).to_have_text(["done", "done"])
    await expect(tab.last_answer.locator(".markdown").last).to_contain_text("tool results: 6")
    await save_screenshot(tab, "playground-approval-done.png")

    [_, answer] = await api_messages(gated_live, gated_key, conversation_id_of(tab))
    assert answer["status"] == "complete"
    assert answer["pending_approvals"] == []


async def test_a_paused_conversation_reloads_with_its_cards_and_a_denial_carries_its_reason(
    tab: Playground, gated_live: Live, gated_key: str
) -> None:
    await tab.send(CALC)
    await tab.answer_done()
    await expect(tab.last_answer.locator(".approval-card")).to_have_count(1)
    cid = conversation_id_of(tab)
    [_, paused] = await api_messages(gated_live, gated_key, cid)
    assert paused["status"] == "awaiting_approval"

    await tab.page.reload()
    card = tab.last_answer.locator(".approval-card")
    await expect(card).to_have_count(1)
    await expect(card.locator(".approval-args")).to_contain_text('"expression": "2+2"')
    await card.get_by_label("Reason for calculator").fill("not today")
    await card.get_by_role("button", name="Deny").click()
    await tab.answer_done()
    await expect(card.locator(".approval-outcome")).to_have_text("Denied: not today")
    first = tab.last_answer.locator("details.tool-card").first
    await expect(first).to_have_class(re.compile(r"\bfailed\b"))
    await expect(tab.last_answer.locator(".markdown").last).to_contain_text("not today")
    [_, answer] = await api_messages(gated_live, gated_key, cid)
    assert answer["status"] == "complete"

    # Reloaded once decided: no card asks again.
    await tab.page.reload()
    await expect(tab.last_answer.locator("details.tool-card")).to_have_count(2)
    await expect(tab.last_answer.locator(".approval-card")).to_have_count(0)


async def test_a_new_message_while_paused_closes_the_cards(tab: Playground) -> None:
    await tab.send(CALC)
    await tab.answer_done()
    card = tab.answers.first.locator(".approval-card")
    await expect(card).to_have_count(1)
    await tab.send("never mind")
    await tab.answer_done()
    await expect(card.locator(".approval-outcome")).to_have_text("Not decided: your new message denies it.")
    await expect(card.get_by_role("button", name="Approve")).to_be_hidden()
