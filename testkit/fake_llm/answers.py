"""What the fake model answers, decided from the directives and independent of the wire format."""

from __future__ import annotations

import json
from dataclasses import dataclass

from testkit.fake_llm.content import JSONDict, _count_words, _new_id
from testkit.fake_llm.directives import Directives


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    input: JSONDict


@dataclass
class Answer:
    """What the fake model says, independent of the wire format."""

    text: str
    tool_calls: list[ToolCall]
    stop_reason: str  # Anthropic vocabulary: end_turn, tool_use, max_tokens, ...

    @property
    def output_tokens(self) -> int:
        tool_words = sum(1 + _count_words(json.dumps(c.input)) for c in self.tool_calls)
        return max(1, len(self.text.split()) + tool_words)


def plan_answer(
    directives: Directives,
    user_text: str,
    tool_results: list[tuple[str, bool]] | None,
    tool_rounds: int,
    id_prefix: str,
) -> Answer:
    """Decide the answer. ``tool_results`` is set when the last turn carries tool results."""
    if directives.tools and (tool_results is None or tool_rounds < directives.tool_chain):
        names = ", ".join(t.name for t in directives.tools)
        preamble = directives.reply if directives.reply is not None else f"Let me use {names}."
        calls = [ToolCall(_new_id(id_prefix), t.name, t.input) for t in directives.tools]
        answer = Answer(preamble, calls, "tool_use")
    elif tool_results is not None:
        text = "tool results: " + "; ".join(("ERROR " if is_error else "") + out for out, is_error in tool_results)
        answer = Answer(text, [], "end_turn")
    elif directives.reply is not None:
        answer = Answer(directives.reply, [], "end_turn")
    elif directives.words is not None:
        answer = Answer(" ".join(f"word{n}" for n in range(1, directives.words + 1)), [], "end_turn")
    else:
        answer = Answer(f"echo: {user_text}".strip(), [], "end_turn")
    if directives.stop:
        answer.stop_reason = directives.stop
    return answer
