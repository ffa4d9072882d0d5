"""The history sent to the model is valid whatever happened to earlier turns."""

from __future__ import annotations

from typing import Any

from app.agent.history import INTERRUPTED, build_history

Row = tuple[str, list[dict[str, Any]]]


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def use(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": "calculator", "input": {"expression": "1"}, "extra": "x"}


def result(tool_id: str, content: str = "1") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": content}


def roles(messages: list[dict[str, Any]]) -> list[str]:
    return [m["role"] for m in messages]


def test_failed_and_cancelled_turns_merge_into_the_next_user_turn() -> None:
    rows: list[Row] = [
        ("user", [text("one")]),
        ("assistant", [text("answer one")]),
        ("user", [text("two")]),
        ("assistant", []),  # error before any token
        ("user", [text("three")]),
        ("assistant", [text("   ")]),  # cancelled: whitespace only
    ]
    history = build_history(rows, "four", budget=10_000)
    assert roles(history) == ["user", "assistant", "user"]
    assert history[-1]["content"] == [text("two"), text("three"), text("four")]


def test_partial_answers_are_kept_and_trailing_whitespace_is_not_sent_last() -> None:
    rows: list[Row] = [("user", [text("hi")]), ("assistant", [text("partial answer   ")])]
    history = build_history(rows, "go on", budget=10_000)
    assert history[1]["content"] == [text("partial answer   ")]  # not last: kept as it was
    assert history[-1] == {"role": "user", "content": [text("go on")]}


def test_tool_turns_replay_as_pairs_and_dangling_calls_are_closed() -> None:
    rows: list[Row] = [
        ("user", [text("calc")]),
        ("assistant", [text("using it"), use("a"), result("a", "42"), text("it is 42")]),
        ("user", [text("again")]),
        ("assistant", [use("b")]),  # interrupted while the tool ran, nothing recorded after
    ]
    history = build_history(rows, "and?", budget=10_000)
    assert roles(history) == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert history[1]["content"][-1] == {
        "type": "tool_use",
        "id": "a",
        "name": "calculator",
        "input": {"expression": "1"},
    }  # unknown fields dropped
    assert history[2]["content"] == [result("a", "42")]
    closing = history[-1]["content"]
    assert closing[0] == {"type": "tool_result", "tool_use_id": "b", "content": INTERRUPTED, "is_error": True}
    assert closing[1:] == [text("and?")]


def test_orphan_results_and_a_leading_assistant_are_dropped() -> None:
    rows: list[Row] = [("assistant", [text("hello?")]), ("user", [result("zzz"), text("hi")])]
    history = build_history(rows, "again", budget=10_000)
    assert history == [{"role": "user", "content": [text("hi"), text("again")]}]


def test_budget_drops_the_oldest_whole_exchanges() -> None:
    rows: list[Row] = []
    for n in range(20):
        rows += [("user", [text(f"question {n} " + "x" * 200)]), ("assistant", [text(f"answer {n} " + "y" * 200)])]
    rows += [("user", [text("calc")]), ("assistant", [use("t"), result("t"), text("done")])]
    history = build_history(rows, "last", budget=600)
    assert history[0]["role"] == "user"
    assert not any(b["type"] == "tool_result" for b in history[0]["content"])  # pairs stay whole
    assert history[-1]["content"] == [text("last")]
    assert sum(len(repr(m["content"])) // 4 for m in history) <= 600
    kept = [b["text"] for m in history for b in m["content"] if b["type"] == "text"]
    assert not any(t.startswith("question 0 ") for t in kept)
    assert any(t.startswith("question 19 ") for t in kept)  # the newest exchanges stay
