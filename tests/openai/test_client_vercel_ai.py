"""The Vercel AI SDK (`ai`, `@ai-sdk/openai` on Node) against the live server: tests/clients/node/drive.mjs
runs the turns of tests/openai/real_clients.py and prints what it got; scripts/test.sh installs it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from testkit.fake_llm import FakeLLMServer
from tests.helpers import Live
from tests.openai.real_clients import ANSWER, ASK, CHAINED, FIRST_TURN, RESENT, WEATHER_IN_PARIS, calls_for, second_turn

NODE_CLIENT = Path(__file__).parents[1] / "clients" / "node"


async def drive(live: Live, key: str, *, api: str, stream: bool) -> dict[str, Any]:
    if not (NODE_CLIENT / "node_modules" / "ai").is_dir():
        pytest.fail(f"the Vercel AI SDK is not installed: run `npm ci` in {NODE_CLIENT} (scripts/test.sh does)")
    scenario = {
        "baseURL": f"{live.url}/v1",
        "apiKey": key,
        "api": api,
        "stream": stream,
        "ask": ASK,
        "chainedAsk": CHAINED,
        "resentAsk": RESENT,
    }
    # A child process, awaited: the live server runs in this event loop and must keep serving.
    node = await asyncio.create_subprocess_exec(
        "node",
        "drive.mjs",
        json.dumps(scenario),
        cwd=NODE_CLIENT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(node.communicate(), 60)
    assert node.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("api", ["responses", "chat"])
async def test_vercel_ai_sdk(live: Live, live_key: str, llm_server: FakeLLMServer, api: str, stream: bool) -> None:
    """openai(...) (the Responses API, the provider's default) and openai.chat(...): a tool run, then
    a second turn chained by previousResponseId (Responses) and one with the history resent."""
    result = await drive(live, live_key, api=api, stream=stream)
    assert "error" not in result, result
    turns = result["turns"]

    first = turns["first"]
    assert first["text"] == ANSWER
    if stream:
        assert first["streamed"] == "Let me use get_weather." + ANSWER
    assert first["toolCalls"] == [{"name": "get_weather", "input": {"city": "Paris"}}]
    assert first["toolResults"] == [WEATHER_IN_PARIS]
    assert first["steps"] == 2
    # The second step's call carried the whole run: the question, the model's call, the result.
    assert calls_for(llm_server, ASK)[-1] == FIRST_TURN

    if api == "responses":
        # The SDK's own way (store: true): what the service said comes back as item_references.
        [_, step] = first["requests"]
        assert step["items"] == ["user", "item_reference", "function_call", "function_call_output"]
        assert turns["resent"]["requests"][0]["items"][-2:] == ["item_reference", "user"]
        assert turns["chained"]["requests"][0]["previousResponseId"] == first["responseId"]

    expected = {"resent": RESENT} if api == "chat" else {"chained": CHAINED, "resent": RESENT}
    assert set(turns) == {"first", *expected}
    for name, text in expected.items():
        assert turns[name]["text"] == f"echo: {text}"
        assert turns[name]["toolCalls"] == []
        assert calls_for(llm_server, text) == [second_turn(text)]
    assert llm_server.state.rejections == []
