"""What chat front-ends send beside OpenAI's fields: Open WebUI's chat and user ids and its background
task calls, LibreChat's (and anyone's) sampling parameters.

**Open WebUI** with `ENABLE_FORWARD_USER_INFO_HEADERS=true` names its chat (`X-OpenWebUI-Chat-Id`)
and its user (`X-OpenWebUI-User-Id`). The chat id is the conversation's `external_id`: one chat is
one conversation, whatever the client does to its history (an edited earlier message, a regenerated
answer). The model sees the history the client sends; the conversation records every call's new
turn in the order they came, so after an edit it holds the superseded branch too.

Its title, tag and follow-up generations (and its other background tasks) are separate calls built
from fixed templates: a user message that opens with `### Task:` and quotes the chat inside
`<chat_history>` tags. They are answered statelessly, as is any call with `X-AgentChat-Task`: no
conversation, no tools, no memory — one model call with the client's messages, its key's token
quota and limits still applied.

**Sampling**: `temperature`, `top_p`, `stop`, `frequency_penalty`, `presence_penalty` and `seed`
reach the provider where it has them (app/llm: each provider sends what it supports, within its own
range). Values of the wrong type are ignored, never a 400: a front-end's settings panel must not
break a chat.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, Header

from app.agent.history import Msg, continue_history
from app.core.errors import ShuttingDown
from app.core.text import clean_text
from app.llm.base import Completed, LLMRequest, Sampling, Usage, text_of
from app.llm.errors import UpstreamError, UpstreamTimeout
from app.openai.chat_wire import usage
from app.openai.schemas import ChatMessage
from app.state import Resources
from app.turns.gate import KeyGate

CHAT_ID_HEADER = "X-OpenWebUI-Chat-Id"
USER_ID_HEADER = "X-OpenWebUI-User-Id"
TASK_HEADER = "X-AgentChat-Task"
# Open WebUI's task templates (title, tags, follow-ups, queries, image prompts…) all open with this
# heading and quote the chat between these tags; a person's message does not.
_TASK_PROMPT = re.compile(r"\A\s*### Task:\s*\n.*<chat_history>.*</chat_history>", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ClientHeaders:
    chat_id: str | None = None
    user_id: str | None = None
    task: bool = False


def client_headers(
    chat_id: Annotated[
        str | None,
        Header(
            alias=CHAT_ID_HEADER,
            max_length=200,
            description="Open WebUI's chat id: the conversation this call continues (or opens under it).",
        ),
    ] = None,
    user_id: Annotated[
        str | None,
        Header(alias=USER_ID_HEADER, max_length=200, description="Open WebUI's user: recorded on a new conversation."),
    ] = None,
    task: Annotated[
        str | None,
        Header(
            alias=TASK_HEADER,
            max_length=64,
            description="Any value: a background task (a title, tags…), answered without conversation or tools.",
        ),
    ] = None,
) -> ClientHeaders:
    return ClientHeaders((chat_id or "").strip() or None, (user_id or "").strip() or None, bool((task or "").strip()))


ClientHeadersDep = Annotated[ClientHeaders, Depends(client_headers)]


def _text(content: str | list[dict[str, Any]] | None) -> str:
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def is_task_call(client: ClientHeaders, messages: list[ChatMessage]) -> bool:
    """A front-end's background task rather than a turn of the chat: the header, or Open WebUI's templates."""
    if client.task:
        return True
    last = next((m for m in reversed(messages) if m.role == "user"), None)
    return last is not None and _TASK_PROMPT.match(_text(last.content)) is not None


# --- sampling -------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def sampling_of(fields: dict[str, Any] | None) -> Sampling:
    """The sampling parameters among a request's fields (those the schema does not name)."""
    fields = fields or {}
    stop = fields.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    seed = fields.get("seed")
    return Sampling(
        temperature=_number(fields.get("temperature")),
        top_p=_number(fields.get("top_p")),
        stop=tuple(s for s in stops if isinstance(s, str) and s),
        frequency_penalty=_number(fields.get("frequency_penalty")),
        presence_penalty=_number(fields.get("presence_penalty")),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    )


# --- stateless task calls -------------------------------------------------------------------------


def _task_messages(messages: list[ChatMessage]) -> tuple[str | None, list[Msg], str]:
    """A task call's system prompt, the messages before its last user message, and that message's
    text (its prompt). Tasks are text: anything else in the call is left out."""
    systems: list[str] = []
    history: list[Msg] = []
    for message in messages:
        text = clean_text(_text(message.content))
        if message.role in ("system", "developer"):
            systems.append(text)
        elif message.role in ("user", "assistant") and text.strip():
            history.append({"role": message.role, "content": [{"type": "text", "text": text}]})
    last = max((i for i, m in enumerate(history) if m["role"] == "user"), default=-1)
    prompt = history.pop(last)["content"][0]["text"] if last >= 0 else ""
    return "\n\n".join(s for s in systems if s.strip()) or None, history[:last] if last >= 0 else history, prompt


async def answer_task(
    resources: Resources,
    owner_id: uuid.UUID,
    messages: list[ChatMessage],
    *,
    agent: str,
    model: str,
    max_tokens: int | None,
    sampling: Sampling,
) -> dict[str, Any]:
    """A background task as a `chat.completion`: one model call with the client's messages and
    system prompt only (not the agent's: the template says what to answer), no tools, nothing stored."""
    settings, served = resources.settings, resources.agents.resolve(agent, None)  # the door checked the key's
    if resources.lifecycle.draining:
        raise ShuttingDown()
    system, history, prompt = _task_messages(messages)
    request = LLMRequest(
        model=served.model,
        messages=continue_history(history, prompt, budget=settings.history_token_budget),
        max_tokens=min(max_tokens or served.max_tokens, served.max_tokens),
        system=system,
        incremental=False,
        sampling=sampling,
    )
    gate = KeyGate(resources, owner_id)  # the key still active, its token quota
    reserved = await gate.reserve(request)
    completed: Completed | None = None
    try:
        with anyio.fail_after(settings.turn_timeout):
            async with served.llm.stream(request) as events:
                async for event in events:
                    if isinstance(event, Completed):
                        completed = event
    except TimeoutError:
        raise UpstreamTimeout("The task did not finish within its deadline.") from None
    finally:
        with anyio.move_on_after(2, shield=True):
            await gate.settle(reserved, completed.usage if completed is not None else Usage())
    if completed is None:
        raise UpstreamError("The model's answer ended without a final message.")
    finish = {"max_tokens": "length", "refusal": "content_filter"}.get(completed.stop_reason, "stop")
    message = {"role": "assistant", "content": text_of(completed.content), "refusal": None}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": usage(completed.usage),
        "system_fingerprint": None,
    }
