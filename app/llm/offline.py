"""A small deterministic demo agent, used when no model is configured. Every answer says it is offline.

It streams word by word and calls the built-in tools when a message asks for what they do, then
answers from their results, so the whole agent loop can be tried without an API key.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import re
import secrets
import zoneinfo
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import imagesize  # type: ignore[import-untyped]  # no stubs or py.typed
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from app.llm.base import Block, Completed, LLMEvent, LLMRequest, TextDelta, ToolCall, Usage

MARK = "[offline demo]"
OFFLINE_NOTICE = f"{MARK} No language model is configured, so a small built-in demo is answering."
CONNECT = "Set ANTHROPIC_API_KEY (or LLM_PROVIDER=openai with OPENAI_BASE_URL) and restart to talk to a real model."
TRY = (
    "Meanwhile, try: what is 12*7? / remember that my favourite colour is teal / what do you remember? / "
    "what time is it in Tokyo?"
)
LABELS = {"calculator": "calculator", "remember": "memory", "recall": "memory", "current_time": "clock"}

_EXPR = r"[-+(\d.][\d.\s+\-*/%^()]*"
_MATH = re.compile(
    rf"\b(?:what(?:'s|\s+is)|calculate|compute|evaluate|solve|how\s+much\s+is)\s*(?:[:=]\s*)?({_EXPR})", re.I
)
_OPERATION = re.compile(r"\d\s*(?:\*\*|//|[-+*/%^])[-+(\s]*\.?\d")
_REMEMBER = re.compile(r"^\s*(?:please\s+)?remember\s+(?:that\s+)?(?P<fact>\S.*)", re.I | re.S)
_RECALL = re.compile(r"\b(?:what\s+do\s+you\s+remember|do\s+you\s+remember|recall)\b(?P<topic>[^?.!]*)", re.I)
_TIME = re.compile(
    r"\b(?:what\s+time|the\s+time|time\s+in|time\s+is\s+it|current\s+time|what(?:'s|\s+is)\s+the\s+date"
    r"|today'?s\s+date|what\s+day\s+is\s+it)\b",
    re.I,
)
_PLACE = re.compile(r"\bin\s+(?P<place>[A-Za-z_/][A-Za-z_/ '-]*)", re.I)
_NOT_A_TOPIC = {"about", "anything", "everything", "me", "my", "i", "you", "the", "a", "of", "from", "what", "all"}


def _expression(said: str) -> str | None:
    """An arithmetic expression the message asks for: after a cue word, or the whole message."""
    text = said.replace("×", "*").replace("÷", "/")
    match = _MATH.search(text) or re.fullmatch(f"({_EXPR})", text.strip().lstrip("=").rstrip("=?").strip())
    if match is None:
        return None
    expr = match.group(1).strip().rstrip(".").strip()
    # A sentence's closing parenthesis is not the expression's. (Past 500 characters the calculator refuses.)
    while len(expr) <= 500 and expr.endswith(")") and expr.count(")") > expr.count("("):
        expr = expr[:-1].rstrip()
    return expr if _OPERATION.search(expr) else None


@functools.cache
def _cities() -> dict[str, str]:
    """'tokyo' → 'Asia/Tokyo', from the tz database (read from disk: call it in a thread)."""
    return {name.rsplit("/", 1)[-1].lower(): name for name in sorted(zoneinfo.available_timezones()) if "/" in name}


async def _zone(said: str) -> str:
    match = _PLACE.search(said)
    if match is None:
        return "UTC"
    words = match["place"].split()[:4]  # "New York", "Buenos Aires", "Port of Spain"
    cities = await asyncio.to_thread(_cities)
    for n in range(len(words), 0, -1):
        candidate = "_".join(words[:n])
        if "/" in candidate or candidate.upper() == "UTC":
            return candidate
        if zone := cities.get(candidate.lower()):
            return zone
    return " ".join(words)  # unknown: the tool says so, and the demo passes that on


async def _intent(said: str) -> tuple[str, dict[str, Any]] | None:
    if match := _REMEMBER.match(said):
        fact = match["fact"].rstrip(" \t\r\n.!")
        return "remember", {"fact": f"The user said: {fact}"}
    if match := _RECALL.search(said):
        topic = [w for w in re.findall(r"\w+", match["topic"].lower()) if w not in _NOT_A_TOPIC]
        # The demo files every fact under "The user said: …", so "user" finds them all.
        return "recall", {"query": " ".join(topic) or "user"}
    if expression := _expression(said):
        return "calculator", {"expression": expression}
    if _TIME.search(said):
        return "current_time", {"timezone": await _zone(said)}
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(
        str(b.get("text", ""))
        for b in content
        if b.get("type") == "text" and not str(b.get("text", "")).startswith(_ATTACHED_TEXT)
    )


_ATTACHED_TEXT = "<attached_file "
_ATTACHED_NAME = re.compile(r'<attached_file name="(?P<name>[^"]*)" media_type="(?P<type>[^"]*)">')


def _received(content: Any) -> list[str]:
    """What files the message carries, as the demo says it: "an image, PNG, 640×480"."""
    if isinstance(content, str):
        return []
    said: list[str] = []
    for block in content:
        kind, source = block.get("type"), block.get("source") or {}
        if kind == "image":
            subtype = str(source.get("media_type", "")).removeprefix("image/").upper()
            try:
                width, height = imagesize.get(io.BytesIO(base64.b64decode(source.get("data", ""))))
            except (ValueError, OSError):
                width = height = -1
            size = f", {width}×{height}" if width > 0 and height > 0 else ""
            said.append(f"an image, {subtype}{size}")
        elif kind == "document":
            try:
                pages = len(PdfReader(io.BytesIO(base64.b64decode(source.get("data", "")))).pages)
            except (PyPdfError, ValueError, KeyError, TypeError, OSError):
                pages = 0
            count = f", {pages} page{'s' if pages != 1 else ''}" if pages else ""
            said.append(f"a PDF document, “{block.get('title', 'document')}”{count}")
        elif kind == "text" and (match := _ATTACHED_NAME.match(str(block.get("text", "")))):
            said.append(f"a text file, “{match['name']}” ({match['type']})")
    return said


def _answer(call: Block | None, result: Block) -> str:
    name, content, failed = (call or {}).get("name"), _text(result.get("content") or ""), result.get("is_error")
    label = LABELS.get(str(name), f"{name} tool")
    if failed:
        return f"The {label} could not answer: {content}"
    if name == "calculator":
        return f"The calculator says {content}."
    if name == "remember":
        return "I'll remember that."
    if name == "recall":
        if not content.lstrip().startswith("-"):
            return "I don't remember anything about that yet. Tell me something with: remember that …"
        return f"Here is what I remember:\n{content}"
    if name == "current_time":
        stamp, _, _ = content.partition(" ")
        try:
            now = datetime.fromisoformat(stamp)
        except ValueError:
            return f"The clock says {content}."
        zone = (call or {}).get("input", {}).get("timezone", "UTC")
        return f"It is {now:%H:%M} on {now:%A}, {now.day} {now:%B %Y} in {zone}."
    return f"The {label} returned: {content}"


async def _reply(request: LLMRequest) -> tuple[str, tuple[str, dict[str, Any]] | None]:
    """What to say, and the tool to call (name, input) if any."""
    users = [i for i, m in enumerate(request.messages) if m["role"] == "user"]
    index = users[-1] if users else -1
    content = request.messages[index]["content"] if users else ""
    results = [] if isinstance(content, str) else [b for b in content if b.get("type") == "tool_result"]
    said = _text(content).strip()
    if received := _received(content):
        echo = f" You said: “{said[:200]}”." if said else ""
        what = ", ".join(received)
        return f"{MARK} I received {what}.{echo} A real model would read it; the demo only describes it.", None
    if results and not said:
        before = request.messages[index - 1]["content"] if index > 0 else []
        calls = {b["id"]: b for b in before if isinstance(b, dict) and b.get("type") == "tool_use"}
        return "\n\n".join(_answer(calls.get(r["tool_use_id"]), r) for r in results), None
    intent = await _intent(said)
    if intent is None:
        echo = f" You said: “{said[:200]}{'…' if len(said) > 200 else ''}”." if said else ""
        return f"{OFFLINE_NOTICE}{echo} {CONNECT} {TRY}", None
    name = intent[0]
    offered = [t["name"] for t in request.tools]
    if name not in offered:
        on_offer = ", ".join(offered) or "none"
        return (
            f"{MARK} That needs the {name} tool, which is not switched on here (tools on offer: {on_offer}). "
            "Add it to AGENT_TOOLS and restart.",
            None,
        )
    return f"{MARK} Let me use the {LABELS[name]}.", intent


class OfflineModel:
    provider = "offline"

    def __init__(self, word_delay: float = 0.01) -> None:
        self.word_delay = word_delay  # seconds between words when someone watches the answer grow

    async def aclose(self) -> None:
        return None

    @asynccontextmanager
    async def stream(self, request: LLMRequest) -> AsyncIterator[AsyncIterator[LLMEvent]]:
        yield self._events(request)

    async def _events(self, request: LLMRequest) -> AsyncIterator[LLMEvent]:
        text, call = await _reply(request)
        delay = self.word_delay if request.incremental else 0.0
        words = text.split(" ")
        for index, word in enumerate(words):
            await asyncio.sleep(delay if index else 0)  # a real checkpoint, like a network read
            yield TextDelta(word if index == 0 else " " + word)
        content: list[Block] = [{"type": "text", "text": text}]
        output_tokens = len(words)
        if call is not None:
            (name, data), tool_id = call, f"toolu_offline_{secrets.token_hex(8)}"
            content.append({"type": "tool_use", "id": tool_id, "name": name, "input": data})
            output_tokens += len(json.dumps(data).split()) + 4
            yield ToolCall(id=tool_id, name=name, input=data)
        usage = Usage(
            input_tokens=sum(len(str(m["content"]).split()) for m in request.messages), output_tokens=output_tokens
        )
        yield Completed(stop_reason="tool_use" if call else "end_turn", usage=usage, content=content)
