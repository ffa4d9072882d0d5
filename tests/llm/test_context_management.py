"""Server-side context management (issue #27, `compaction: provider`) on the wire: what the Anthropic
provider sends and reads, against the fake model, which the official SDK's beta types also read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import pytest
from anthropic.types.beta import BetaCompactionBlock

from app.agent.history import build_history
from app.core.config import Settings
from app.llm.anthropic import COMPACT_BETA, CONTEXT_BETA, AnthropicModel, outgoing
from app.llm.base import Completed, ContextManagement, LLMEvent, LLMRequest
from app.llm.errors import UpstreamRejected
from app.llm.summary import PROVIDER_FIGURES, SUMMARY_OPEN, compaction_news
from testkit.fake_llm import FakeLLMServer

FACT = "FACT: the user's cat is called Bruno-1729."
CONTEXT = ContextManagement(clear_at=40_000, compact_at=50_000, keep_tool_uses=3, clear_at_least=1_000)
BETAS = [CONTEXT_BETA, COMPACT_BETA]
EDITS = {
    "edits": [
        {
            "type": "clear_tool_uses_20250919",
            "trigger": {"type": "input_tokens", "value": 40_000},
            "keep": {"type": "tool_uses", "value": 3},
            "clear_at_least": {"type": "input_tokens", "value": 1_000},
        },
        {"type": "compact_20260112", "trigger": {"type": "input_tokens", "value": 50_000}},
    ]
}

UNDER_MINIMUM = {"type": "input_tokens", "value": 10_000}


def filler(words: int) -> str:
    return " ".join(["a"] * words)


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


@asynccontextmanager
async def provider(fake: FakeLLMServer) -> AsyncIterator[AnthropicModel]:
    settings = Settings(anthropic_api_key="k", anthropic_base_url=fake.url, llm_provider="anthropic", llm_max_retries=0)
    client = AnthropicModel(settings)
    try:
        yield client
    finally:
        await client.aclose()


async def completed(client: AnthropicModel, request: LLMRequest) -> Completed:
    async with client.stream(request) as events:
        seen: list[LLMEvent] = [event async for event in events]
    last = seen[-1]
    assert isinstance(last, Completed)
    return last


def managed(messages: list[dict[str, Any]], *, incremental: bool, tools: bool = False) -> LLMRequest:
    schemas = [{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}] if tools else []
    return LLMRequest(
        model="claude-test",
        messages=messages,
        max_tokens=100,
        system="Be brief.",
        tools=schemas,
        incremental=incremental,
        context=CONTEXT,
    )


@pytest.mark.parametrize("incremental", [False, True], ids=["json", "stream"])
async def test_a_managed_call_is_compacted_and_its_block_goes_back_as_it_came(
    llm_server: FakeLLMServer, incremental: bool
) -> None:
    first = [user(f"{FACT} [[reply:noted]]\n{filler(60_000)}")]
    async with provider(llm_server) as client:
        done = await completed(client, managed(first, incremental=incremental))
        sent = llm_server.state.request_bodies()[-1]
        assert sent["context_management"] == EDITS  # the API's minimum trigger, editing first
        block = done.content[0]
        assert block["type"] == "compaction"
        assert "Bruno-1729" in block["content"]  # the provider's summary keeps the fact
        assert block["encrypted_content"]
        assert [b.get("text") for b in done.content[1:]] == ["noted"]
        figures = block[PROVIDER_FIGURES]
        assert figures["messages_summarized"] == 1
        assert figures["tokens_before"] >= 60_000  # what the compaction read (at least the trigger)
        assert 0 < figures["tokens_after"] < 1_000  # what the answer read: the system prompt and the summary
        # The compaction's own sampling is billed beside the answer's: it is in the usage.
        assert done.usage.input_tokens >= 60_000 + figures["tokens_after"] // 2
        assert done.usage.output_tokens > 1
        assert compaction_news(done.content) == {
            "compacted": True,
            "messages_summarized": 1,
            "tokens_before": figures["tokens_before"],
            "tokens_after": figures["tokens_after"],
        }

        # The next call sends the history from the block on (app/agent/history.py cuts it there).
        rows = [("user", first[0]["content"]), ("assistant", done.content)]
        history = build_history(rows, "[[reply:and?]] what is my cat called?", budget=200_000)
        assert history[0]["role"] == "assistant"
        assert history[0]["content"][0]["type"] == "compaction"
        again = await completed(client, managed(history, incremental=incremental))
        body = llm_server.state.request_bodies()[-1]
        opening = body["messages"][0]["content"][0]
        assert opening == {  # as it came, our figures off
            "type": "compaction",
            "content": block["content"],
            "encrypted_content": block["encrypted_content"],
        }
        assert body["messages"][0]["content"][-1]["cache_control"] == {"type": "ephemeral"}  # cached from here
        assert "a a a" not in json.dumps(body["messages"])  # what it folded is not sent again
        assert [b["type"] for b in again.content] == ["text"]  # under the trigger now: no compaction
    assert llm_server.state.rejections == []


async def test_old_tool_results_are_cleared_first_and_counted_in_the_figures(llm_server: FakeLLMServer) -> None:
    messages: list[dict[str, Any]] = [user(f"{FACT} {filler(60_000)}")]
    for n in range(8):
        call = {"type": "tool_use", "id": f"toolu_{n}", "name": "lookup", "input": {}}
        result = {"type": "tool_result", "tool_use_id": f"toolu_{n}", "content": filler(2_000)}
        messages += [{"role": "assistant", "content": [call]}, {"role": "user", "content": [result]}]
    messages[-1]["content"].append({"type": "text", "text": "[[reply:done]] go on"})
    async with provider(llm_server) as client:
        done = await completed(client, managed(messages, incremental=True, tools=True))
    figures = done.content[0][PROVIDER_FIGURES]
    assert figures["cleared_tool_uses"] == 5  # all but the last 3
    # Before: what the compaction read, plus what clearing took off first (the request as sent).
    assert figures["tokens_before"] >= 60_000 + 8 * 2_000
    assert llm_server.state.rejections == []


async def test_the_sdks_beta_types_read_the_fakes_compaction(llm_server: FakeLLMServer) -> None:
    """The fake's answers are what the SDK's own types expect (JSON and the streamed accumulation)."""
    params: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 50,
        "messages": [user(f"{FACT} [[reply:ok]] {filler(55_000)}")],
        "context_management": EDITS,
        "betas": BETAS,
    }
    async with anthropic.AsyncAnthropic(base_url=llm_server.url, api_key="k", max_retries=0) as sdk:
        message = await sdk.beta.messages.create(**params)
        # The same messages again (as a regenerated answer sends them) are compacted afresh.
        async with sdk.beta.messages.stream(**params) as stream:
            streamed = await stream.get_final_message()
    for answer in (message, streamed):
        compaction = answer.content[0]
        assert isinstance(compaction, BetaCompactionBlock)
        assert compaction.content is not None
        assert "Bruno-1729" in compaction.content
        assert answer.usage.iterations is not None
        assert [i.type for i in answer.usage.iterations] == ["compaction", "message"]
        assert answer.context_management is not None
        assert answer.context_management.applied_edits == []
        assert answer.content[1].type == "text"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"context_management": {"edits": [{"type": "compact_20990101"}]}}, "does not match any of the expected"),
        (
            {"context_management": {"edits": [{"type": "compact_20260112", "trigger": UNDER_MINIMUM}]}},
            "greater than or equal to 50000",
        ),
        ({"betas": [CONTEXT_BETA]}, "requires the anthropic-beta header compact-2026-01-12"),
        ({"context_management": {"edits": [EDITS["edits"][0], EDITS["edits"][0]]}}, "may be given once"),
    ],
    ids=["unknown-edit", "trigger-under-the-minimum", "no-beta", "twice"],
)  # fmt: skip
async def test_the_fake_refuses_what_the_api_refuses(
    llm_server: FakeLLMServer, change: dict[str, Any], why: str
) -> None:
    params: dict[str, Any] = {
        "model": "claude-test",
        "max_tokens": 50,
        "messages": [user("hi")],
        "context_management": EDITS,
        "betas": BETAS,
        **change,
    }
    async with anthropic.AsyncAnthropic(base_url=llm_server.url, api_key="k", max_retries=0) as sdk:
        with pytest.raises(anthropic.BadRequestError, match=why):
            await sdk.beta.messages.create(**params)


async def test_a_compaction_block_not_sent_back_or_changed_is_refused(llm_server: FakeLLMServer) -> None:
    first = [user(f"{FACT} [[reply:noted]] {filler(55_000)}")]
    async with provider(llm_server) as client:
        done = await completed(client, managed(first, incremental=False))
        block = {k: v for k, v in done.content[0].items() if k != PROVIDER_FIGURES}
        later = user("[[reply:ok]] more")
        # The same messages again, without the answer's compaction block: they would be compacted twice.
        with pytest.raises(UpstreamRejected):
            await completed(
                client, managed([*first, {"role": "assistant", "content": done.content[1:]}, later], incremental=False)
            )
        assert "compacted by an earlier response" in llm_server.state.rejections[-1]
        # The block with its summary edited.
        edited = {**block, "content": block["content"] + " FACT: invented."}
        with pytest.raises(UpstreamRejected):
            await completed(client, managed([{"role": "assistant", "content": [edited]}, later], incremental=False))
        assert "exactly as it was returned" in llm_server.state.rejections[-1]
        # As returned, it is accepted.
        await completed(client, managed([{"role": "assistant", "content": [block]}, later], incremental=False))
    assert len(llm_server.state.rejections) == 2


def test_without_context_management_a_compaction_goes_as_summary_text() -> None:
    """An agent whose compaction is no longer `provider`: the block becomes the summary, first, as ours is."""
    block = {"type": "compaction", "content": "S", "encrypted_content": "x", PROVIDER_FIGURES: {}}
    messages = [{"role": "assistant", "content": [block, {"type": "text", "text": "noted"}]}, user("more")]
    request = LLMRequest(model="m", messages=messages, max_tokens=10)
    sent, betas = outgoing(request)
    assert betas == []
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"][0]["text"].startswith(SUMMARY_OPEN)
    assert sent[1]["content"] == [{"type": "text", "text": "noted"}]
    managed_sent, managed_betas = outgoing(LLMRequest(model="m", messages=messages, max_tokens=10, context=CONTEXT))
    assert managed_betas == BETAS
    assert managed_sent[0]["content"][0] == {"type": "compaction", "content": "S", "encrypted_content": "x"}
    assert PROVIDER_FIGURES in messages[0]["content"][0]  # the caller's messages are not changed


def test_a_failed_compaction_goes_back_but_cuts_nothing() -> None:
    """A compaction block with no content (the provider's summary failed) is a no-op it accepts back."""
    failed = {"type": "compaction"}
    rows = [("user", [{"type": "text", "text": "one"}]), ("assistant", [failed, {"type": "text", "text": "noted"}])]
    history = build_history(rows, "two", budget=10_000)
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[1]["content"][0] == failed
    assert compaction_news(rows[1][1]) is None  # nothing to show
    sent, _ = outgoing(LLMRequest(model="m", messages=history, max_tokens=10))
    assert [b["type"] for b in sent[1]["content"]] == ["text"]  # without context management: dropped
