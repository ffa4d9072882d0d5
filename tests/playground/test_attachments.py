"""The playground's attachments: the attach button, pasting and dropping files into the page, thumbnails
in the tray and in the transcript (live and after a reload); the files reach the model as blocks."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, FilePayload, expect

from testkit.fake_llm import FakeLLMServer
from tests.files import samples
from tests.helpers import Live
from tests.playground.test_playground import (  # noqa: F401 (browser: the session's Chromium, a fixture)
    Playground,
    api_messages,
    browser,
    conversation_id_of,
    open_tab,
)

# A page-side helper: dispatch a paste or a drop carrying one file made from base64.
DISPATCH = """([kind, name, type, data]) => {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  if (kind === "paste") {
    const event = new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true });
    document.getElementById("message-input").dispatchEvent(event);
  } else {
    const target = document.getElementById("conversation");
    for (const name of ["dragover", "drop"]) {
      target.dispatchEvent(new DragEvent(name, { dataTransfer: transfer, bubbles: true, cancelable: true }));
    }
  }
}"""


@pytest.fixture
async def tab(browser: Browser, live: Live, live_key: str) -> AsyncIterator[Playground]:  # noqa: F811
    async with open_tab(browser, live) as playground:
        await playground.connect(live_key)
        yield playground


async def test_attach_paste_and_drop_then_send(
    tab: Playground,
    live: Live,
    live_key: str,
    llm_server: FakeLLMServer,
    browser: Browser,  # noqa: F811
) -> None:
    page = tab.page
    image, pasted, document = samples.png(64, 48), samples.gif(8, 8), samples.pdf(1)
    # The attach button's file picker.
    async with page.expect_file_chooser() as chooser:
        await page.get_by_role("button", name="Attach files").click()
    payload: FilePayload = {"name": "shot.png", "mimeType": "image/png", "buffer": image}
    await (await chooser.value).set_files([payload])
    # A pasted image, and a dropped PDF.
    await page.evaluate(DISPATCH, ["paste", "pasted.gif", "image/gif", base64.b64encode(pasted).decode()])
    await page.evaluate(DISPATCH, ["drop", "paper.pdf", "application/pdf", base64.b64encode(document).decode()])

    tray = page.locator("#attachment-tray .attachment")
    await expect(tray).to_have_count(3)
    await expect(page.locator("#attachment-tray .attachment.uploading")).to_have_count(0)
    await expect(tray.nth(0).locator("img")).to_have_attribute(
        "src", "data:image/png;base64," + base64.b64encode(image).decode()
    )
    await expect(tray.nth(2)).to_contain_text("paper.pdf")

    await tab.send("What are these?")
    await tab.answer_done()
    await expect(page.locator("#attachment-tray")).to_be_hidden()
    user = page.locator("#thread .message.user").last
    await expect(user.locator(".attachment")).to_have_count(3)
    await expect(user.locator("img.attachment-thumb")).to_have_count(2)

    sent = llm_server.state.request_bodies()[-1]["messages"][-1]["content"]
    assert [b["type"] for b in sent] == ["image", "image", "document", "text"]
    assert sent[0]["source"]["data"] == base64.b64encode(image).decode()
    assert sent[1]["source"]["media_type"] == "image/gif"
    items = await api_messages(live, live_key, conversation_id_of(tab))
    attachments = items[0]["attachments"]
    assert isinstance(attachments, list)
    assert [a["filename"] for a in attachments] == ["shot.png", "pasted.gif", "paper.pdf"]

    # After a reload the transcript's thumbnails come from the files themselves.
    await page.reload()
    user = page.locator("#thread .message.user").last
    await expect(user.locator("img.attachment-thumb")).to_have_count(2)
    await expect(user.locator("img.attachment-thumb").first).to_have_attribute(
        "src", "data:image/png;base64," + base64.b64encode(image).decode()
    )


async def test_a_refused_file_is_marked_and_not_sent(tab: Playground, llm_server: FakeLLMServer) -> None:
    page = tab.page
    await page.evaluate(DISPATCH, ["drop", "tool.png", "image/png", base64.b64encode(samples.EXECUTABLE).decode()])
    chip = page.locator("#attachment-tray .attachment.failed")
    await expect(chip).to_contain_text("Unsupported file type")
    await chip.get_by_role("button", name="Remove tool.png").click()
    await expect(page.locator("#attachment-tray")).to_be_hidden()
    await tab.send("hello")
    await tab.answer_done()
    assert llm_server.state.request_bodies()[-1]["messages"][-1]["content"] == [{"type": "text", "text": "hello"}]
