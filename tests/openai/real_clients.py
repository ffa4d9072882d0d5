"""What the real-client tests share (issue #24): one script of turns, and what the model must have seen.

Each client runs the same three turns against the live server, with its own function tool
`get_weather` (the client runs it, the service never does):
1. ASK: the fake model calls get_weather, the client runs it and sends the result back, and the
   fake answers from the result (a multi-step run to a final answer);
2. CHAINED: a second turn chained to the first with previous_response_id (Responses clients only);
3. RESENT: a second turn with the first one's whole history sent by the client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx2

from testkit.fake_llm import FakeLLMServer

ASK = 'weather? [[tool:get_weather {"city": "Paris"}]]'
CHAINED = "and tomorrow? (chained)"
RESENT = "and tomorrow? (resent)"
WEATHER_IN_PARIS = "sunny in Paris"  # what every client's get_weather returns for Paris
ANSWER = f"tool results: {WEATHER_IN_PARIS}"  # the fake's answer once it has the tool's result


class Sent:
    """What a client sent the service: each request body, recorded by its HTTP client's event hook."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def record(self, request: httpx2.Request) -> None:
        if request.content:
            self.bodies.append(json.loads(request.content))

    def items(self) -> list[tuple[str | None, list[str]]]:
        """Per request: its previous_response_id and its input items' (or messages') types or roles."""
        return [
            (body.get("previous_response_id"), [item.get("type") or item["role"] for item in body.get("input", [])])
            if "input" in body
            else (None, [message["role"] for message in body["messages"]])
            for body in self.bodies
        ]


@asynccontextmanager
async def recording() -> AsyncIterator[tuple[Sent, httpx2.AsyncClient]]:
    """An HTTP client for the SDK under test (the `openai` SDK's own kind), and what it sends."""
    sent = Sent()
    async with httpx2.AsyncClient(event_hooks={"request": [sent.record]}, timeout=20) as http:
        yield sent, http


def weather(city: str) -> str:
    """The client-side tool: each client wraps this in its own tool type."""
    return f"sunny in {city}"


def _result_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content)


def _blocks(message: dict[str, Any]) -> list[str]:
    """A sent message's blocks, in short: its text, or the call / result it is."""
    content = message["content"]
    if isinstance(content, str):
        return [content]
    out = []
    for block in content:
        if block["type"] == "text":
            out.append(block["text"])
        elif block["type"] == "tool_use":
            out.append(f"call {block['name']} {json.dumps(block['input'], sort_keys=True)}")
        elif block["type"] == "tool_result":
            out.append(f"result {_result_text(block.get('content', ''))}")
        else:
            out.append(block["type"])
    return out


def sent(body: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """What one request to the model carried: each message's role and blocks, in short."""
    return [(m["role"], _blocks(m)) for m in body["messages"]]


def calls_for(llm_server: FakeLLMServer, text: str) -> list[list[tuple[str, list[str]]]]:
    """What the model was sent by every call whose newest user text is ``text``, oldest first."""
    found = []
    for body in llm_server.state.request_bodies():
        said = [m for m in body["messages"] if m["role"] == "user" and any(_is_text(b) for b in _content(m))]
        if said and _content(said[-1])[-1].get("text") == text:
            found.append(sent(body))
    return found


def _content(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _is_text(block: dict[str, Any]) -> bool:
    return block.get("type") == "text" and bool(block.get("text"))


# The first turn as the model must see it on its second call: the question, its own call, the result.
FIRST_TURN = [
    ("user", [ASK]),
    ("assistant", ["Let me use get_weather.", 'call get_weather {"city": "Paris"}']),
    ("user", [f"result {WEATHER_IN_PARIS}"]),
]


def second_turn(text: str) -> list[tuple[str, list[str]]]:
    """The whole history the model must see on a second turn asking ``text``."""
    return [*FIRST_TURN, ("assistant", [ANSWER]), ("user", [text])]
