"""Request bodies of the OpenAI-compatible routes: the fields this service acts on.

Sampling fields (temperature, top_p, stop, penalties, seed) are read from the extra fields and
passed to the provider where it has them (app/openai/clients.py); fields it does not act on
(logit_bias, reasoning…) are accepted and ignored, as the clients that send them expect; what it
cannot honour (n > 1, non-text content, built-in OpenAI tools) is a 400 naming the field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

Metadata = dict[str, str]


class Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- Chat Completions ---------------------------------------------------------------------------


class FunctionCall(Loose):
    name: str
    arguments: str = ""


class ToolCallIn(Loose):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Loose):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class FunctionSpec(Loose):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatTool(Loose):
    type: str = "function"
    function: FunctionSpec


class StreamOptions(Loose):
    include_usage: bool = False


class ChatCompletionRequest(Loose):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[ChatTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    n: int = Field(default=1, ge=1)
    user: str | None = Field(default=None, max_length=256)
    metadata: Metadata | None = None


# --- Responses ----------------------------------------------------------------------------------


def _item(kind: str, required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "title": kind, "properties": properties, "required": required}


_TEXT = {"type": "string"}
_PARTS = {
    "anyOf": [
        _TEXT,
        {
            "type": "array",
            "items": _item("text part", ["type", "text"], type={"enum": ["input_text", "output_text"]}, text=_TEXT),
        },
    ]
}
# What `input` takes, published (its items are read as dicts: app/openai/history.py names a bad one).
INPUT_SCHEMA = {
    "anyOf": [
        _TEXT,
        {
            "type": "array",
            "items": {
                "anyOf": [
                    _item(
                        "message",
                        ["role", "content"],
                        type={"enum": ["message"]},
                        role={"enum": ["user", "assistant", "system", "developer"]},
                        content=_PARTS,
                    ),
                    _item(
                        "function_call",
                        ["type", "call_id", "name", "arguments"],
                        type={"enum": ["function_call"]},
                        call_id=_TEXT,
                        name=_TEXT,
                        arguments=_TEXT,
                    ),
                    _item(
                        "function_call_output",
                        ["type", "call_id", "output"],
                        type={"enum": ["function_call_output"]},
                        call_id=_TEXT,
                        output=_TEXT,
                    ),
                    _item("item_reference", ["type", "id"], type={"enum": ["item_reference"]}, id=_TEXT),
                    _item(
                        "mcp_approval_response",
                        ["type", "approval_request_id", "approve"],
                        type={"enum": ["mcp_approval_response"]},
                        approval_request_id=_TEXT,
                        approve={"type": "boolean"},
                        reason={"anyOf": [_TEXT, {"type": "null"}]},
                    ),
                ]
            },
        },
    ]
}


class ResponseCreateRequest(Loose):
    model: str | None = None
    input: Annotated[str | list[dict[str, Any]], WithJsonSchema(INPUT_SCHEMA)]
    instructions: str | None = Field(default=None, max_length=20_000)
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None  # its id, or {"id": …}
    stream: bool = False
    background: bool = False
    store: bool = True
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)
    metadata: Metadata | None = None


# --- What the routes answer (documentation; bodies carry more fields than these) ----------------


class ModelOut(Loose):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(Loose):
    object: Literal["list"] = "list"
    data: list[ModelOut]


class ChatCompletionOut(Loose):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: dict[str, Any] | None = None


class ResponseOut(Loose):
    id: str
    object: Literal["response"]
    created_at: float
    status: str
    model: str
    output: list[dict[str, Any]]


class ResponseDeleted(Loose):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


class InputItemList(Loose):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool
