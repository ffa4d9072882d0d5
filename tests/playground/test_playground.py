"""The playground at `/`, driven in a real headless Chromium against the live server and the fake LLM.

Chromium is Debian's package (`scripts/ensure-apt.sh chromium chromium` installs it); Playwright never downloads a
browser here. A missing browser is a failure, not a skip: these tests are the playground's only proof.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Locator,
    Page,
    Request,
    Route,
    async_playwright,
    expect,
)

from app.core.agents_config import parse_agents
from app.core.config import Settings
from app.main import create_app
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live, eventually, live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EXPECTED_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not await anyio.Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run scripts/ensure-apt.sh chromium chromium (apt-get install chromium)",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Playground:
    """One browser tab on the playground, with what its console said."""

    page: Page
    url: str
    console: list[ConsoleMessage] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    @property
    def answers(self) -> Locator:
        return self.page.locator("#thread .message.assistant")

    @property
    def last_answer(self) -> Locator:
        return self.answers.last

    async def open(self) -> None:
        await self.page.goto(self.url + "/")

    async def connect(self, key: str) -> None:
        await self.open()
        await self.page.get_by_label("API key").fill(key)
        await self.page.get_by_label("API key").press("Enter")
        await expect(self.page.locator("#chat-view")).to_be_visible()

    async def send(self, text: str) -> None:
        box = self.page.get_by_label("Message")
        await box.fill(text)
        await box.press("Enter")

    async def answer_done(self, within_ms: float = 10_000) -> None:
        await expect(self.last_answer).not_to_have_class(re.compile(r"\bstreaming\b"), timeout=within_ms)
        await expect(self.page.get_by_role("button", name="Send")).to_be_visible()

    def csp_violations(self) -> list[str]:
        return [m.text for m in self.console if "Content Security Policy" in m.text]


@asynccontextmanager
async def open_tab(browser: Browser, live: Live) -> AsyncIterator[Playground]:
    """A fresh browser context (its own sessionStorage); fails if the page threw or broke its CSP."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    tab = Playground(page, live.url)
    page.on("console", lambda message: tab.console.append(message))
    page.on("pageerror", lambda error: tab.page_errors.append(str(error)))
    try:
        yield tab
    finally:
        await context.close()
    assert tab.page_errors == [], "uncaught errors in the page"
    assert tab.csp_violations() == [], "the page broke its own Content-Security-Policy"


@pytest.fixture
async def playground(browser: Browser, live: Live) -> AsyncIterator[Playground]:
    async with open_tab(browser, live) as tab:
        yield tab


@pytest.fixture
async def connected(playground: Playground, live_key: str) -> Playground:
    await playground.connect(live_key)
    return playground


async def api_messages(live: Live, key: str, conversation_id: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {key}"}) as http:
        r = await http.get(f"/conversations/{conversation_id}/messages")
    r.raise_for_status()
    items: list[dict[str, object]] = r.json()["items"]
    return items


def conversation_id_of(tab: Playground) -> str:
    fragment = tab.page.url.partition("#")[2]
    assert re.fullmatch(r"[0-9a-f-]{36}", fragment), f"no conversation in the URL: {tab.page.url}"
    return fragment


# ------------------------------------------------------------------------------------------ serving


async def test_page_and_assets_carry_a_strict_csp(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == EXPECTED_CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["referrer-policy"] == "no-referrer"
    assert '<script src="static/playground/app.js"' in page.text
    assert "http" not in page.text.lower()  # nothing from another origin: works offline

    for name, media_type in [("app.js", "text/javascript"), ("style.css", "text/css"), ("icon.svg", "image/svg+xml")]:
        asset = await client.get(f"/static/playground/{name}")
        assert asset.status_code == 200, name
        assert asset.headers["content-type"].startswith(media_type)
        assert asset.headers["content-security-policy"] == EXPECTED_CSP
        again = await client.get(f"/static/playground/{name}", headers={"If-None-Match": asset.headers["etag"]})
        assert again.status_code == 304

    script = (await client.get("/static/playground/app.js")).text
    for unsafe in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert unsafe not in script


async def test_only_allow_listed_files_are_served(client: httpx.AsyncClient) -> None:
    for name in ["router.py", "index.html", "..%2Frouter.py", "%2E%2E%2F__init__.py", "nope.js"]:
        r = await client.get(f"/static/playground/{name}")
        assert r.status_code == 404, name
        assert r.json()["error"]["type"] == "not_found"


# ------------------------------------------------------------------------------------------ chatting


async def test_send_a_message_and_watch_the_answer_stream_in(connected: Playground) -> None:
    page = connected.page
    await expect(page.get_by_role("heading", name="What can I help with?")).to_be_visible()

    await connected.send("Count for me [[words:12]] [[slow:0.05]]")

    user = page.locator("#thread .message.user")
    await expect(user).to_have_text("Count for me [[words:12]] [[slow:0.05]]")
    # Mid-stream: part of the answer is on screen and the Stop button is offered.
    await expect(connected.last_answer).to_have_class(re.compile(r"\bstreaming\b"))
    await expect(connected.last_answer).to_contain_text("word2")
    await expect(page.get_by_role("button", name="Stop")).to_be_visible()
    assert "word12" not in await connected.last_answer.inner_text()

    await connected.answer_done()
    await expect(connected.last_answer).to_have_text(" ".join(f"word{n}" for n in range(1, 13)))
    await expect(page.locator("#model-name")).to_have_text("claude-test")
    await expect(page.get_by_label("Message")).to_have_value("")
    await expect(page.locator(".conversation-link")).to_have_count(1)


async def test_shift_enter_adds_a_line_and_enter_sends(connected: Playground) -> None:
    box = connected.page.get_by_label("Message")
    await box.press_sequentially("first line")
    await box.press("Shift+Enter")
    await box.press_sequentially("second line")
    await expect(box).to_have_value("first line\nsecond line")
    await expect(connected.answers).to_have_count(0)

    await box.press("Enter")
    await connected.answer_done()
    await expect(connected.page.locator("#thread .message.user")).to_have_text("first line\nsecond line")
    await expect(connected.last_answer).to_have_text("echo: first line\nsecond line", use_inner_text=True)


async def test_history_survives_a_reload(connected: Playground, live_key: str, browser: Browser, live: Live) -> None:
    page = connected.page
    await connected.send("[[reply:The first answer.]]")
    await connected.answer_done()
    await connected.send("[[reply:The second answer.]]")
    await connected.answer_done()
    conversation_id = conversation_id_of(connected)

    await page.reload()
    assert await page.evaluate("sessionStorage.getItem('agentchat.apiKey')") == live_key
    assert await page.evaluate("localStorage.length") == 0
    await expect(page.locator("#chat-view")).to_be_visible()
    listed = page.locator(".conversation-link")
    await expect(listed).to_have_count(1)
    await expect(listed).to_have_attribute("aria-current", "true")
    await expect(connected.answers).to_have_text(["The first answer.", "The second answer."])
    await expect(page.locator("#thread .message.user")).to_have_count(2)

    # A new chat clears the thread; the list opens the old one again.
    await page.get_by_role("button", name="New chat").click()
    await expect(connected.answers).to_have_count(0)
    assert "#" not in page.url
    await listed.click()
    await expect(connected.answers).to_have_text(["The first answer.", "The second answer."])
    assert conversation_id_of(connected) == conversation_id

    # sessionStorage belongs to the tab: another tab must ask for the key again.
    async with open_tab(browser, live) as other:
        await other.open()
        await expect(other.page.get_by_label("API key")).to_be_visible()
        await expect(other.page.locator("#chat-view")).to_be_hidden()


async def test_stop_ends_the_answer_and_closes_the_upstream_stream(
    connected: Playground, llm_server: FakeLLMServer, live: Live, live_key: str
) -> None:
    page = connected.page
    await connected.send("Go on and on [[words:400]] [[slow:0.05]]")
    await expect(connected.last_answer).to_contain_text("word5")
    assert llm_server.state.open_streams == 1

    await page.get_by_role("button", name="Stop").click()

    await connected.answer_done(within_ms=3_000)
    await expect(connected.last_answer.locator(".message-note")).to_have_text("Stopped.")
    await eventually(lambda: llm_server.state.open_streams == 0, timeout=2.0)
    shown = await connected.last_answer.locator(".markdown").inner_text()
    assert shown.startswith("word1 word2")
    assert "word400" not in shown

    # The server kept the partial answer, marked incomplete, and the page shows it that way.
    conversation_id = conversation_id_of(connected)

    async def recorded_incomplete() -> bool:
        items = await api_messages(live, live_key, conversation_id)
        return items[-1]["status"] == "incomplete"

    await eventually(recorded_incomplete, timeout=3.0)
    await page.reload()
    await expect(connected.last_answer.locator(".message-note")).to_have_text("Stopped.")
    await expect(connected.last_answer.locator(".markdown")).to_contain_text("word1 word2")


async def test_markup_in_an_answer_is_inert_text(connected: Playground) -> None:
    page = connected.page
    payload = '<img src=x onerror="window.__xss=1"> and <script>window.__xss=2</script>'
    await connected.send(f"[[reply:{payload}]]")
    await connected.answer_done()

    await expect(connected.last_answer).to_have_text(payload)
    await expect(page.locator("#thread .message.user")).to_have_text(f"[[reply:{payload}]]")
    await expect(page.locator(".conversation-title")).to_contain_text("<img src=x")
    assert await page.locator("#thread img, #thread script, #sidebar img").count() == 0
    await page.wait_for_timeout(200)  # an onerror handler would have fired by now
    assert await page.evaluate("typeof window.__xss") == "undefined"

    await page.reload()
    await expect(connected.last_answer).to_have_text(payload)
    assert await page.locator("#thread img, #thread script").count() == 0
    assert await page.evaluate("typeof window.__xss") == "undefined"
    assert connected.csp_violations() == []
    assert connected.page_errors == []


MARKDOWN_ANSWER = """Here is a **small** example:

```python
def greet(name):
    return f"Hello, {name}!"
```

- fast
- small
- *safe*

1. Install it
2. Run `make test`

See [the docs](https://example.com/docs) but not [this](javascript:evil)."""


async def test_markdown_answers_render_as_code_lists_and_links(connected: Playground) -> None:
    await connected.send("Show me some Markdown, please.")
    await connected.answer_done()
    await connected.send(f"[[reply:{MARKDOWN_ANSWER}]]")
    await connected.answer_done()
    answer = connected.last_answer

    await expect(answer.locator(".code-block pre code")).to_have_text('def greet(name):\n    return f"Hello, {name}!"')
    await expect(answer.locator(".code-lang")).to_have_text("python")
    await expect(answer.locator("ul > li")).to_have_text(["fast", "small", "safe"])
    await expect(answer.locator("ul em")).to_have_text("safe")
    await expect(answer.locator("ol > li")).to_have_text(["Install it", "Run make test"])
    await expect(answer.locator("ol code")).to_have_text("make test")
    await expect(answer.locator("strong")).to_have_text("small")
    # A model-written link shows its full address beside its label, and opens only when confirmed.
    await expect(answer.locator(".model-link")).to_have_text("the docs https://example.com/docs")
    link = answer.get_by_role("link", name="https://example.com/docs")
    await expect(link).to_have_attribute("href", "https://example.com/docs")
    await expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    await expect(answer.locator("a")).to_have_count(1)
    await expect(answer).to_contain_text("[this](javascript:evil)")
    asked: list[str] = []

    async def decline(dialog: Dialog) -> None:
        asked.append(dialog.message)
        await dialog.dismiss()

    connected.page.once("dialog", decline)
    pages_before = len(connected.page.context.pages)
    await link.click()
    await eventually(lambda: asked, timeout=3)
    assert asked
    assert "https://example.com/docs" in asked[0]
    assert len(connected.page.context.pages) == pages_before  # declined: nothing opened

    await save_screenshots(connected)


async def save_screenshot(tab: Playground, name: str) -> None:
    """For people to look at (test-artifacts/ is git-ignored)."""
    await anyio.Path(ARTIFACTS).mkdir(exist_ok=True)
    await tab.page.screenshot(path=ARTIFACTS / name)


async def save_screenshots(tab: Playground) -> None:
    """The conversation in light, dark and at phone width, where the conversation list is a drawer."""
    page = tab.page
    await save_screenshot(tab, "playground.png")
    await page.emulate_media(color_scheme="dark")
    await save_screenshot(tab, "playground-dark.png")
    await page.emulate_media(color_scheme="light")
    await page.set_viewport_size({"width": 390, "height": 780})
    await expect(page.locator("#sidebar")).not_to_be_in_viewport()
    await save_screenshot(tab, "playground-phone.png")
    await page.get_by_role("button", name="Conversations").click()
    await expect(page.locator("#sidebar")).to_be_in_viewport()
    await page.wait_for_timeout(300)  # the drawer's slide-in
    await save_screenshot(tab, "playground-phone-menu.png")


async def test_an_upstream_error_shows_its_message_and_request_id(connected: Playground) -> None:
    await connected.send("This will fail [[status:529]]")
    await connected.answer_done()
    notice = connected.last_answer.locator(".notice.error")
    await expect(notice).to_contain_text("overloaded")
    await expect(notice.locator(".request-id code")).to_have_text(re.compile(r"^\S{8,}$"))
    await save_screenshot(connected, "playground-error.png")


async def test_an_http_error_shows_its_message_and_request_id(connected: Playground) -> None:
    responses: list[str] = []
    connected.page.on(
        "response", lambda r: responses.append(r.headers.get("x-request-id", "")) if r.url.endswith("/chat") else None
    )
    await connected.send("x" * 32_001)
    await connected.answer_done()
    notice = connected.last_answer.locator(".notice.error")
    await expect(notice).to_contain_text("longer than 32000 characters")
    await expect(notice.locator(".error-type")).to_have_text("payload_too_large")
    assert responses
    assert responses[0]
    await expect(notice.locator(".request-id code")).to_have_text(responses[0])


async def test_a_refused_key_is_explained(playground: Playground) -> None:
    await playground.open()
    await playground.page.get_by_label("API key").fill("not-a-key")
    await playground.page.get_by_role("button", name="Connect").click()
    notice = playground.page.locator("#key-error .notice")
    await expect(notice).to_be_visible()
    await expect(notice.locator(".request-id code")).not_to_be_empty()
    await expect(playground.page.locator("#chat-view")).to_be_hidden()
    assert await playground.page.evaluate("sessionStorage.length") == 0
    await save_screenshot(playground, "playground-key.png")


async def test_a_key_in_the_url_fragment_connects_and_never_reaches_the_server(
    playground: Playground, live_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    page = playground.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    caplog.set_level(logging.INFO, logger="uvicorn.access")

    # Hold the first API call: the fragment must be gone before the page even knows the key works.
    asked, release = anyio.Event(), anyio.Event()

    async def hold(route: Route) -> None:
        asked.set()
        await release.wait()
        await route.continue_()

    await page.route(re.compile(r"/conversations\?"), hold)
    await page.goto(f"{playground.url}/#key={live_key}")
    with anyio.fail_after(5):
        await asked.wait()
    assert await page.evaluate("location.hash") == ""
    release.set()

    await expect(page.locator("#chat-view")).to_be_visible()
    await expect(page.locator("#key-view")).to_be_hidden()
    assert await page.evaluate("location.hash") == ""
    assert page.url == playground.url + "/"
    assert await page.evaluate("sessionStorage.getItem('agentchat.apiKey')") == live_key
    # The key works for the conversation too, not only for the list.
    await playground.send("[[reply:Connected from the fragment.]]")
    await playground.answer_done()
    await expect(playground.last_answer).to_have_text("Connected from the fragment.")

    secret = live_key.rsplit("_", 1)[-1]
    assert any(url.endswith("/chat") for url in requested)
    assert not [url for url in requested if secret in url or "key=" in url]
    # The server's own record of what it was asked (raw log records, before any redaction).
    access = [record.getMessage() for record in caplog.records if record.name == "uvicorn.access"]
    assert any('"GET / HTTP' in line for line in access), access
    assert any("/conversations?" in line for line in access), access
    logged = [record.getMessage() for record in caplog.records]
    assert not [line for line in logged if secret in line or "key=" in line]


async def test_other_fragments_are_left_alone_and_a_bad_fragment_key_is_refused(playground: Playground) -> None:
    page = playground.page
    await page.goto(playground.url + "/#not-a-key")
    await expect(page.get_by_label("API key")).to_be_visible()
    assert await page.evaluate("location.hash") == "#not-a-key"

    await page.goto("about:blank")  # a new load: a change of fragment alone would not start the page again
    await page.goto(playground.url + "/#key=ak_refused")
    await expect(page.locator("#key-error .notice")).to_be_visible()
    await expect(page.locator("#chat-view")).to_be_hidden()
    assert await page.evaluate("location.hash") == ""
    assert await page.evaluate("sessionStorage.length") == 0


async def test_tool_calls_appear_as_cards(connected: Playground) -> None:
    await connected.send(
        'Work it out [[tool:calculator {"expression": "6*7"}]] [[tool:calculator {"expression": "1/0"}]]'
    )
    await connected.answer_done()
    # The fake model calls the tools the message names, every time: no card is a failure, not a skip.
    cards = connected.last_answer.locator("details.tool-card")
    await expect(cards).to_have_count(2)
    await expect(cards.locator(".tool-name")).to_have_text(["calculator", "calculator"])
    await expect(cards.nth(0)).not_to_have_class(re.compile(r"\bfailed\b"))
    await expect(cards.nth(1)).to_have_class(re.compile(r"\bfailed\b"))
    await cards.nth(0).locator("summary").click()
    await expect(cards.nth(0)).to_contain_text('"expression": "6*7"')
    await expect(cards.nth(0).locator(".tool-section").last).to_contain_text("42")
    await expect(cards.nth(1).locator(".tool-status")).to_have_text("error")
    await expect(connected.last_answer.locator(".markdown").last).to_contain_text("tool results: 42")
    await cards.nth(1).locator("summary").click()
    await save_screenshot(connected, "playground-tools.png")

    await connected.page.reload()
    cards = connected.last_answer.locator("details.tool-card")
    await expect(cards).to_have_count(2)
    await expect(cards.nth(1)).to_have_class(re.compile(r"\bfailed\b"))
    await expect(cards.nth(1)).to_contain_text("Division by zero")


async def test_memories_are_listed_and_can_be_forgotten(connected: Playground) -> None:
    await expect(connected.page.locator("#memory-empty")).to_be_visible()
    await connected.send('[[tool:remember {"fact": "The user likes teal."}]] noted')
    await connected.answer_done()
    memory = connected.page.locator("#memory-list .memory")
    await expect(memory).to_have_count(1)
    await expect(memory.locator(".memory-text")).to_have_text("The user likes teal.")
    await expect(memory.locator(".memory-badge")).to_have_count(0)  # written with no web content read
    await memory.get_by_role("button", name="Forget: The user likes teal.").click()
    await expect(memory).to_have_count(0)
    await expect(connected.page.locator("#memory-empty")).to_be_visible()
    await connected.page.reload()  # gone on the server too, not just from the page
    await expect(connected.page.locator("#memory-empty")).to_be_visible()
    assert connected.csp_violations() == []


# ------------------------------------------------------------------------------------------ agents

TWO_AGENTS: dict[str, Any] = {
    "default": "helper",
    "agents": [
        {
            "name": "helper",
            "description": "Answers everyday questions.",
            "provider": "anthropic",
            "model": "claude-helper",
        },
        {
            "name": "second",
            "description": "A second opinion, from another model.",
            "provider": "anthropic",
            "model": "claude-second",
        },
    ],
}


@pytest.fixture
async def two_agents(settings: Settings, browser: Browser) -> AsyncIterator[tuple[Playground, Live, str]]:
    """A tab connected to a server with two agents (both on the fake model, each with its own model name)."""
    configured = settings.model_copy(update={"agents": parse_agents(json.dumps(TWO_AGENTS)), "llm_provider": None})
    async with live_server(create_app(configured)) as live:
        key = await make_key(live.state)
        async with open_tab(browser, live) as tab:
            await tab.connect(key)
            yield tab, live, key


async def get_conversation(live: Live, key: str, conversation_id: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=live.url, headers={"Authorization": f"Bearer {key}"}) as http:
        r = await http.get(f"/conversations/{conversation_id}")
    r.raise_for_status()
    conversation: dict[str, Any] = r.json()
    return conversation


async def test_a_new_conversation_starts_with_the_picked_agent_and_keeps_it(
    two_agents: tuple[Playground, Live, str], llm_server: FakeLLMServer
) -> None:
    tab, live, key = two_agents
    page = tab.page
    sent: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        if request.url.endswith("/chat"):
            body = request.post_data_json
            assert isinstance(body, dict)
            sent.append(body)

    page.on("request", record)

    picker = page.get_by_label("Agent", exact=True)
    await expect(picker).to_be_visible()
    await expect(picker.locator("option")).to_have_text(["helper", "second"])
    await expect(picker).to_have_value("helper")  # the default, preselected
    await expect(page.locator("#agent-description")).to_have_text("Answers everyday questions.")

    # By keyboard, as a reader without a mouse would.
    await picker.focus()
    await picker.press("ArrowDown")
    await expect(picker).to_have_value("second")
    await expect(page.locator("#agent-description")).to_have_text("A second opinion, from another model.")

    await tab.send("[[reply:A second opinion.]]")
    await tab.answer_done()
    await expect(tab.last_answer).to_have_text("A second opinion.")
    assert sent[0]["agent"] == "second"
    assert llm_server.state.request_bodies()[-1]["model"] == "claude-second"
    conversation_id = conversation_id_of(tab)
    assert (await get_conversation(live, key, conversation_id))["agent"] == "second"

    # Bound: the bar names the agent and offers no switch; the list shows it too.
    await expect(picker).to_be_hidden()
    await expect(page.locator("#agent-current")).to_have_text("Agent second")
    listed = page.locator(".conversation-link")
    await expect(listed).to_have_count(1)
    await expect(listed.locator(".conversation-agent")).to_have_text("Agent: second")

    # A later turn names no agent: the conversation's own answers.
    await tab.send("[[reply:Still the second.]]")
    await tab.answer_done()
    assert "agent" not in sent[1]
    assert sent[1]["conversation_id"] == conversation_id
    assert llm_server.state.request_bodies()[-1]["model"] == "claude-second"

    # Opened again (from the address, after a reload) it still shows its agent.
    await page.reload()
    await expect(tab.answers).to_have_text(["A second opinion.", "Still the second."])
    await expect(page.locator("#agent-current-name")).to_have_text("second")
    await expect(picker).to_be_hidden()
    await save_screenshot(tab, "playground-agent-bound.png")

    # A new chat offers the picker again, with the default chosen.
    await page.get_by_role("button", name="New chat").click()
    await expect(picker).to_be_visible()
    await expect(picker).to_have_value("helper")
    await tab.send("[[reply:Helper here.]]")
    await tab.answer_done()
    assert sent[-1]["agent"] == "helper"
    assert llm_server.state.request_bodies()[-1]["model"] == "claude-helper"
    await expect(listed.locator(".conversation-agent")).to_have_text(["Agent: helper", "Agent: second"])
    await expect(page.locator("#agent-current-name")).to_have_text("helper")

    await listed.nth(1).click()
    await expect(page.locator("#agent-current-name")).to_have_text("second")
    await expect(listed.nth(1)).to_have_attribute("aria-current", "true")
    await page.get_by_role("button", name="New chat").click()
    await picker.select_option("second")
    await save_screenshot(tab, "playground-agents.png")
    await page.set_viewport_size({"width": 390, "height": 780})
    await expect(page.locator("#sidebar")).not_to_be_in_viewport()
    await page.wait_for_timeout(300)  # the drawer's slide-out
    await save_screenshot(tab, "playground-agents-phone.png")


async def test_with_one_agent_the_bar_names_it_and_offers_no_picker(connected: Playground) -> None:
    page = connected.page
    await expect(page.locator("#agent-current")).to_have_text("Agent agentchat")
    await expect(page.get_by_label("Agent", exact=True)).to_be_hidden()  # nothing to choose from
    await connected.send("[[reply:Hello.]]")
    await connected.answer_done()
    await expect(page.locator(".conversation-agent")).to_have_text("Agent: agentchat")
