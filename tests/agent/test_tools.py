"""Built-in tools: memory across conversations, the calculator, the clock, and adding a tool."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import BaseModel, Field

from app.agent.tools.base import Tool, ToolContext, ToolError
from app.agent.tools.calculator import evaluate
from app.agent.tools.memory import RECALL_NOTE
from app.core.config import Settings
from app.main import create_app
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import Live, live_server


def tool(name: str, args: dict[str, object]) -> str:
    return f"[[tool:{name} {json.dumps(args)}]]"


async def post(live: Live, key: str, message: str, **extra: object) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        r = await http.post("/chat", json={"message": message, **extra}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_memory_crosses_conversations_but_not_owners(agent_live: Live, agent_key: str) -> None:
    fact = "The user's favourite editor is Helix."
    await post(agent_live, agent_key, tool("remember", {"fact": fact}))
    await post(agent_live, agent_key, tool("remember", {"fact": "Deploys happen on Tuesdays."}))
    # A different conversation of the same owner recalls it.
    answer = await post(agent_live, agent_key, tool("recall", {"query": "favourite EDITOR"}))
    (call,) = answer["message"]["tool_calls"]  # type: ignore[index]
    assert call["result"] == f"- {fact}\n{RECALL_NOTE}"
    # Another owner's agent finds nothing.
    other = await make_key(agent_live.state, "other")
    answer = await post(agent_live, other, tool("recall", {"query": "editor"}))
    (call,) = answer["message"]["tool_calls"]  # type: ignore[index]
    assert call["result"] == "Nothing remembered matches that."


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("1 + 2 * 3", 7),
        ("(1 + 2) * 3", 9),
        ("2 ^ 10", 1024),
        ("-3 // 2", -2),
        ("sqrt(16) + abs(-2)", 6.0),
        ("round(pi, 2)", 3.14),
        ("7 % 4", 3),
        ("1.5e3", 1500.0),
    ],
)
def test_calculator_arithmetic(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "open('/etc/passwd')",
        "().__class__",
        "[1, 2]",
        "x",
        "2 ** 100000",
        "1 if 1 else 2",
        "lambda: 1",
        "sqrt(-1)",
        "'a' * 3",
        "True + 1",
        "(-8) ** 0.5",
    ],
)
def test_calculator_refuses_anything_else(expression: str) -> None:
    with pytest.raises(ToolError):
        evaluate(expression)


async def test_current_time(agent_live: Live, agent_key: str) -> None:
    answer = await post(agent_live, agent_key, tool("current_time", {"timezone": "Asia/Tokyo"}))
    (call,) = answer["message"]["tool_calls"]  # type: ignore[index]
    assert call["is_error"] is False
    assert "+09:00" in call["result"]
    assert "Asia/Tokyo" in call["result"]


class ShoutInput(BaseModel):
    text: str = Field(description="What to shout.")


async def shout(data: ShoutInput, _: ToolContext) -> str:
    return data.text.upper() + "!"


async def test_a_newly_registered_tool_is_offered_and_called(settings: Settings, llm_server: FakeLLMServer) -> None:
    shout_tool = Tool(name="shout", description="Shout the text back.", input_model=ShoutInput, run=shout)
    async with live_server(create_app(settings, extra_tools=[shout_tool])) as live:
        key = await make_key(live.state)
        answer = await post(live, key, tool("shout", {"text": "hello"}))
    offered = {t["name"]: t for t in llm_server.state.request_bodies()[0]["tools"]}
    assert offered["shout"]["description"] == "Shout the text back."
    assert offered["shout"]["input_schema"]["properties"]["text"]["type"] == "string"
    assert answer["message"]["tool_calls"][0]["result"] == "HELLO!"  # type: ignore[index]


def test_unknown_tool_in_settings_is_a_configuration_error(settings: Settings) -> None:
    with pytest.raises(SystemExit):
        create_app(settings.model_copy(update={"agent_tools": "calculator,teleport"}))
