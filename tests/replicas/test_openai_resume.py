"""The Responses API across two replicas: a background response streamed from one is resumed after
event N on the other with nothing missed or repeated, and cancelled from either."""

from __future__ import annotations

from openai import AsyncOpenAI, NotFoundError

from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live, eventually


def sdk(live: Live, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=20)


async def test_background_resume_after_n_on_the_other_replica(
    replicas: tuple[Live, Live], owner_key: str, llm_server: FakeLLMServer
) -> None:
    a, b = replicas
    async with sdk(a, owner_key) as on_a, sdk(b, owner_key) as on_b:
        stream = await on_a.responses.create(
            model="agentchat", input="[[words:30]] [[slow:0.03]]", stream=True, background=True
        )
        first = []
        async for event in stream:
            first.append(event)
            if event.type == "response.output_text.delta" and len(first) >= 8:
                break
        await stream.close()  # the client leaves; in the background the run goes on
        response_id = first[0].response.id  # type: ignore[union-attr]
        last = first[-1].sequence_number
        rest = [e async for e in await on_b.responses.retrieve(response_id, stream=True, starting_after=last)]
        assert [e.sequence_number for e in rest] == list(range(last + 1, last + 1 + len(rest)))
        assert rest[-1].type == "response.completed"
        text = "".join(e.delta for e in [*first, *rest] if e.type == "response.output_text.delta")
        assert text == " ".join(f"word{n}" for n in range(1, 31))
        # The SDK's own helper replays from the start (it filters by starting_after itself).
        async with on_b.responses.stream(response_id=response_id, starting_after=last) as again:
            replayed = [e async for e in again]
        assert [e.sequence_number for e in replayed] == [e.sequence_number for e in rest]
        done = await on_b.responses.retrieve(response_id)
        assert (done.status, done.output_text) == ("completed", text)
        async with sdk(b, await make_key(b.state, "stranger")) as stranger:
            try:
                await stranger.responses.retrieve(response_id, stream=True)
                raise AssertionError("another key's response must be a 404")
            except NotFoundError:
                pass
    assert llm_server.state.closed_by_client == 0


async def test_cancel_a_background_response_from_the_other_replica(
    replicas: tuple[Live, Live], owner_key: str, llm_server: FakeLLMServer
) -> None:
    a, b = replicas
    async with sdk(a, owner_key) as on_a, sdk(b, owner_key) as on_b:
        started = await on_a.responses.create(model="agentchat", input="[[words:500]] [[slow:0.02]]", background=True)
        assert (started.status, started.background) == ("in_progress", True)
        await eventually(lambda: llm_server.state.open_streams == 1, timeout=3.0)
        cancelled = await on_b.responses.cancel(started.id)
        assert cancelled.status == "cancelled"
        await eventually(lambda: llm_server.state.open_streams == 0, timeout=2.0)
        assert llm_server.state.closed_by_client == 1
        again = await on_a.responses.retrieve(started.id)
        assert again.status == "cancelled"
        assert again.output_text.startswith("word1")
        # The stream of a cancelled response ends with response.incomplete, on either replica.
        events = [e async for e in await on_b.responses.retrieve(started.id, stream=True)]
        assert events[-1].type == "response.incomplete"
        assert events[-1].response.status == "cancelled"
        # And the chain goes on.
        nxt = await on_b.responses.create(model="agentchat", input="next", previous_response_id=started.id)
        assert nxt.output_text == "echo: next"
    assert llm_server.state.rejections == []
