"""An answer continued after approvals as several Responses objects: ids, labels, and where each begins."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from app.llm.base import Block, Usage
from app.openai.response_objects import output_items, parse_segment, response_id, segment_of

ANSWER = uuid.UUID("01a24f9c-6f61-7062-89b2-07af913af2b5")
CALL: Block = {"type": "tool_use", "id": "toolu_1", "name": "tracker__create_issue", "input": {"title": "x"}}


def test_response_ids_name_the_answer_and_its_continuation() -> None:
    assert parse_segment(response_id(ANSWER)) == (ANSWER, 0)
    assert parse_segment(response_id(ANSWER, 2)) == (ANSWER, 2)
    for bad in (
        f"resp_{ANSWER.hex}_",
        f"resp_{ANSWER.hex}_x",
        f"resp_{ANSWER.hex}_0",
        f"resp_{ANSWER.hex}_01",
        f"resp_{ANSWER.hex}_1234567",
        "resp_zz",
        "msg_1",
    ):
        assert parse_segment(bad) is None, bad


def test_a_paused_response_asks_and_its_continuation_answers() -> None:
    blocks: list[Block] = [{"type": "text", "text": "Filing it."}, CALL]
    [text, request] = output_items(blocks, ANSWER, paused=True)
    assert text["id"] == f"msg_{ANSWER.hex}_0"
    # An MCP tool's call: its server's label and the tool's name there.
    assert (request["type"], request["id"], request["server_label"], request["name"]) == (
        "mcp_approval_request",
        "mcpr_toolu_1",
        "tracker",
        "create_issue",
    )
    assert json.loads(request["arguments"]) == {"title": "x"}

    result: Block = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ISSUE-7"}
    continued = [*blocks, result, {"type": "text", "text": "Done."}]
    [call, done] = output_items(continued, ANSWER, start=len(blocks))
    assert (call["type"], call["approval_request_id"], call["output"]) == ("mcp_call", "mcpr_toolu_1", "ISSUE-7")
    assert done["id"] == f"msg_{ANSWER.hex}_1"  # texts numbered across the whole answer


def test_segments_split_the_answer_its_usage_and_its_request() -> None:
    at = datetime(2026, 12, 7, tzinfo=UTC)
    attributes = {
        "model": "agentchat",
        "resumptions": [{"at": 2, "usage": [10, 5, 0, 0], "created_at": at.timestamp() + 60, "decisions": []}],
    }
    first = segment_of(attributes, 0, at, Usage(30, 12), ANSWER)
    second = segment_of(attributes, 1, at, Usage(30, 12), ANSWER)
    assert first is not None
    assert second is not None
    assert (first.start, first.end, first.used, first.created_at) == (0, 2, Usage(10, 5), at)
    assert (second.start, second.end, second.used) == (2, None, Usage(20, 7))
    assert second.created_at.timestamp() == at.timestamp() + 60
    assert second.attributes["previous_response_id"] == response_id(ANSWER)  # a /chat continuation: derived
    assert segment_of(attributes, 2, at, Usage(), ANSWER) is None
