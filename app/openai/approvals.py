"""Responses approvals: a paused answer's `mcp_approval_request` items, decided by the client.

A gated tool's call (an agent's `approval`) ends its response `completed` with an
`mcp_approval_request` item, `mcpr_<tool_use id>`. The client answers with `mcp_approval_response`
input items (`approval_request_id`, `approve`, `reason`) and `previous_response_id`: that continues
the same paused turn (TurnService.resume) as a new response, `resp_<answer id>_<k>`
(app/openai/response_objects.py). A client that keeps the context itself (the Agents SDK's default)
sends the whole history before its approval responses, and no `previous_response_id`: the history
is the paused turn's already (it is not stored again), and the approval requests name the turn.
"""

from __future__ import annotations

from typing import Any

from app.agent.loop import Decision
from app.openai.errors import InvalidParam
from app.openai.history import check_characters

APPROVAL_RESPONSE = "mcp_approval_response"
MAX_REASON_CHARS = 2000
MAX_DECISIONS = 64


def is_approval(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == APPROVAL_RESPONSE


def _echo(item: Any) -> bool:
    """An item a client may resend beside its decisions: the approval request itself (or a reference)."""
    if not isinstance(item, dict):
        return False
    if item.get("type") == "mcp_approval_request":
        return True
    return item.get("type") == "item_reference" and str(item.get("id", "")).startswith("mcpr_")


def _output(item: Any) -> bool:
    """An item of a response's own output (what a client resends of the paused response), not input."""
    if not isinstance(item, dict):
        return False
    if item.get("type") in ("mcp_call", "mcp_approval_request", "function_call", "reasoning", "mcp_list_tools"):
        return True
    return item.get("role") == "assistant" and item.get("type", "message") == "message"


def approval_decisions(input_: str | list[dict[str, Any]], *, chained: bool = True) -> list[Decision] | None:
    """The decisions an input's mcp_approval_response items carry; None when it has none (a new turn).

    Not `chained` (no previous_response_id): the client may resend the whole context first, which
    must end with the paused response's output, approval requests included (so nothing new hides
    before the decisions)."""
    if isinstance(input_, str) or not any(is_approval(item) for item in input_):
        return None
    decisions: list[Decision] = []
    first = next(i for i, item in enumerate(input_) if is_approval(item))
    resent = 0
    echoes = [i for i in range(first) if _echo(input_[i])]
    if not chained and echoes and all(_output(item) for item in input_[echoes[-1] : first]):
        resent = first  # the history the client resends, up to the paused output: the paused turn holds it
    for i, item in enumerate(input_):
        param = f"input[{i}]"
        if _echo(item) or i < resent:
            continue
        if not is_approval(item):
            raise InvalidParam(
                param,
                "An input that answers approval requests holds mcp_approval_response items only "
                "(a new message after them is a new response).",
            )
        request_id, approve, reason = item.get("approval_request_id"), item.get("approve"), item.get("reason")
        if not isinstance(request_id, str) or not request_id.startswith("mcpr_") or len(request_id) > 205:
            raise InvalidParam(f"{param}.approval_request_id", "Name the mcp_approval_request item (mcpr_…).")
        if not isinstance(approve, bool):
            raise InvalidParam(f"{param}.approve", "approve is true or false.")
        if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
            raise InvalidParam(f"{param}.reason", f"reason is a string of at most {MAX_REASON_CHARS} characters.")
        check_characters(reason, f"{param}.reason")
        decisions.append(Decision(request_id.removeprefix("mcpr_"), approve, None, reason or None))
    if len(decisions) > MAX_DECISIONS:
        raise InvalidParam("input", f"At most {MAX_DECISIONS} approval responses at once.")
    return decisions


def approval_input_items(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A continuation's input, as input items: the approval responses it was given."""
    return [
        {
            "id": f"mcpa_{d['tool_use_id']}",
            "type": APPROVAL_RESPONSE,
            "approval_request_id": f"mcpr_{d['tool_use_id']}",
            "approve": d["approve"],
            "reason": d.get("reason"),
        }
        for d in record.get("decisions", [])
    ]
