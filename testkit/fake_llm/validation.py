"""Request validation: what the real Messages and Chat Completions APIs would reject with a 400."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from testkit.fake_llm.content import JSONDict, _blocks

TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class InvalidRequest(Exception):
    """The request would be rejected by the real API; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def validate_anthropic(body: JSONDict) -> None:
    """Raise InvalidRequest for what the real Messages API would reject with a 400."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("model: Field required")
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise InvalidRequest("max_tokens: Field required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise InvalidRequest("max_tokens: Input should be a valid integer greater than or equal to 1")
    if "stream" in body and not isinstance(body["stream"], bool):
        raise InvalidRequest("stream: Input should be a valid boolean")
    _validate_system(body.get("system"))
    tools = _validate_tools(body.get("tools"))

    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages: at least one message is required")
    for i, message in enumerate(messages):
        _validate_message(i, message, is_final=i == len(messages) - 1)
    first = _blocks(messages[0]["content"])
    # A history may start at a compaction block sent back (context management): the API reads from there.
    if messages[0]["role"] != "user" and not (first and first[0].get("type") == "compaction"):
        raise InvalidRequest('messages: first message must use the "user" role')
    for i in range(1, len(messages)):
        if messages[i]["role"] == messages[i - 1]["role"]:
            raise InvalidRequest(
                f'messages.{i}: roles must alternate between "user" and "assistant", '
                f'but found two consecutive "{messages[i]["role"]}" messages'
            )
    _validate_tool_pairing(messages, tools_defined=bool(tools))

    final = messages[-1]
    if final["role"] == "assistant":
        final_blocks = _blocks(final["content"])
        if (
            final_blocks
            and final_blocks[-1].get("type") == "text"
            and final_blocks[-1]["text"] != final_blocks[-1]["text"].rstrip()
        ):
            raise InvalidRequest("messages: final assistant content cannot end with trailing whitespace")


def _validate_system(system: Any) -> None:
    if system is None or isinstance(system, str):
        return
    if not isinstance(system, list):
        raise InvalidRequest("system: Input should be a valid string or a list of text blocks")
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest(f"system.{j}: only text blocks are allowed in system")
        _validate_text_block(f"system.{j}", block)


def _validate_tools(tools: Any) -> list[JSONDict]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise InvalidRequest("tools: Input should be a valid list")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools.{i}: Input should be an object")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
            raise InvalidRequest(
                f"tools.{i}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$' (got {name!r})"
            )
        if name in seen:
            raise InvalidRequest(f"tools: Tool names must be unique (duplicate {name!r})")
        seen.add(name)
        if tool.get("type", "custom") == "custom" and not isinstance(tool.get("input_schema"), dict):
            raise InvalidRequest(f"tools.{i}.custom.input_schema: Field required")
    return tools


def _validate_text_block(where: str, block: JSONDict) -> None:
    text = block.get("text")
    if not isinstance(text, str):
        raise InvalidRequest(f"{where}.text: Field required")
    if not text:
        raise InvalidRequest(f"{where}: text content blocks must be non-empty")
    if not text.strip():
        raise InvalidRequest(f"{where}: text content blocks must contain non-whitespace text")


_EMPTY_CONTENT = "all messages must have non-empty content except for the optional final assistant message"


def _validate_message(i: int, message: Any, *, is_final: bool) -> None:
    if not isinstance(message, dict):
        raise InvalidRequest(f"messages.{i}: Input should be an object")
    role = message.get("role")
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant' (got {role!r})")
    content = message.get("content")
    # Only a final assistant message (a prefill) may be empty.
    may_be_empty = is_final and role == "assistant"
    if isinstance(content, str):
        if content == "" and not may_be_empty:
            raise InvalidRequest(f"messages.{i}: {_EMPTY_CONTENT}")
        if content and not content.strip():
            raise InvalidRequest(f"messages.{i}: text content blocks must contain non-whitespace text")
        return
    if not isinstance(content, list):
        raise InvalidRequest(f"messages.{i}.content: Input should be a valid string or list of content blocks")
    if not content and not may_be_empty:
        raise InvalidRequest(f"messages.{i}: {_EMPTY_CONTENT}")
    for j, block in enumerate(content):
        where = f"messages.{i}.content.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise InvalidRequest(f"{where}: content blocks must be objects with a 'type'")
        kind = block["type"]
        if kind == "text":
            _validate_text_block(where, block)
        elif kind == "tool_use":
            if role != "assistant":
                raise InvalidRequest(f"{where}: tool_use blocks are only allowed in assistant messages")
            if not isinstance(block.get("id"), str) or not block["id"]:
                raise InvalidRequest(f"{where}.id: Field required")
            if not isinstance(block.get("name"), str) or not TOOL_NAME_RE.match(block["name"]):
                raise InvalidRequest(f"{where}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if not isinstance(block.get("input"), dict):
                raise InvalidRequest(f"{where}.input: Input should be a valid dictionary")
        elif kind == "tool_result":
            if role != "user":
                raise InvalidRequest(f"{where}: tool_result blocks are only allowed in user messages")
            if not isinstance(block.get("tool_use_id"), str):
                raise InvalidRequest(f"{where}.tool_use_id: Field required")
            inner_content = block.get("content")
            if isinstance(inner_content, list):
                for k, inner in enumerate(_blocks(inner_content)):
                    if inner.get("type") == "text":
                        _validate_text_block(f"{where}.content.{k}", inner)
        elif kind in ("image", "document"):
            _validate_file_block(where, block, role)
        elif kind not in KNOWN_BLOCKS:
            raise InvalidRequest(
                f"{where}: Input tag '{kind}' found using 'type' does not match any of the expected tags"
            )


# The Messages API's content block types (any other `type` is a 400).
KNOWN_BLOCKS = {
    "text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking", "server_tool_use",
    "web_search_tool_result", "search_result", "container_upload", "mcp_tool_use", "mcp_tool_result", "compaction",
}  # fmt: skip
IMAGE_MEDIA_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp"}
# What each media type's bytes begin with: the real API refuses an image whose bytes are not its type.
_MAGIC = {
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/jpeg": b"\xff\xd8\xff",
    "image/gif": b"GIF8",
    "image/webp": b"RIFF",
    "application/pdf": b"%PDF-",
}


def _validate_file_block(where: str, block: JSONDict, role: str) -> None:
    """An `image` or `document` block: in a user message, a base64 source of an accepted media type
    whose data decodes and whose bytes are of that type."""
    kind = block["type"]
    if role != "user":
        raise InvalidRequest(f"{where}: {kind} blocks are only allowed in user messages")
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "file":  # the Files API (checked by check_file_sources)
        if not isinstance(source.get("file_id"), str) or set(source) != {"type", "file_id"}:
            raise InvalidRequest(f"{where}.source: a file source is {{type, file_id}}")
        return
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise InvalidRequest(f"{where}.source: only base64 sources are accepted here")
    media_type = source.get("media_type")
    allowed = IMAGE_MEDIA_TYPES if kind == "image" else {"application/pdf"}
    if media_type not in allowed:
        raise InvalidRequest(
            f"{where}.source.media_type: Input should be one of {sorted(allowed)} (got {media_type!r})"
        )
    data = source.get("data")
    try:
        raw = base64.b64decode(data, validate=True) if isinstance(data, str) and data else b""
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise InvalidRequest(f"{where}.source.data: invalid base64 data")
    if not raw.startswith(_MAGIC[media_type]):
        raise InvalidRequest(f"{where}.source: the data is not a valid {media_type}")
    extra = set(block) - {"type", "source", "title", "context", "cache_control", "citations"}
    if extra:
        raise InvalidRequest(f"{where}.{sorted(extra)[0]}: Extra inputs are not permitted")


def _tool_use_ids(message: JSONDict) -> list[str]:
    return [b["id"] for b in _blocks(message["content"]) if b.get("type") == "tool_use"]


def _validate_tool_pairing(messages: list[JSONDict], *, tools_defined: bool) -> None:
    seen_ids: set[str] = set()
    for i, message in enumerate(messages):
        blocks = _blocks(message["content"])
        if any(b.get("type") in ("tool_use", "tool_result") for b in blocks) and not tools_defined:
            raise InvalidRequest("Requests which include `tool_use` or `tool_result` blocks must define tools.")
        if message["role"] == "assistant":
            ids = _tool_use_ids(message)
            for tool_id in ids:
                if tool_id in seen_ids:
                    raise InvalidRequest(f"messages.{i}: `tool_use` ids must be unique (duplicate {tool_id})")
                seen_ids.add(tool_id)
            if not ids:
                continue
            following = messages[i + 1] if i + 1 < len(messages) else None
            answered = set()
            if following is not None:
                answered = {
                    b.get("tool_use_id") for b in _blocks(following["content"]) if b.get("type") == "tool_result"
                }
            missing = [tool_id for tool_id in ids if tool_id not in answered]
            if missing:
                raise InvalidRequest(
                    f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                    f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
                    "in the next message."
                )
            continue
        # A user message: its tool_result blocks must answer the previous assistant turn, and come first.
        previous_ids = set(_tool_use_ids(messages[i - 1])) if i > 0 else set()
        answered_here: set[str] = set()
        seen_other = False
        for j, block in enumerate(blocks):
            if block.get("type") != "tool_result":
                seen_other = True
                continue
            tool_use_id = block["tool_use_id"]
            if seen_other:
                raise InvalidRequest(
                    f"messages.{i}.content.{j}: `tool_result` blocks must come before any other content "
                    "in the message that answers a `tool_use`"
                )
            if tool_use_id not in previous_ids:
                raise InvalidRequest(
                    f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                    f"{tool_use_id}. Each `tool_result` block must have a corresponding `tool_use` block "
                    "in the previous message."
                )
            if tool_use_id in answered_here:
                raise InvalidRequest(f"messages.{i}.content.{j}: duplicate `tool_result` for {tool_use_id}")
            answered_here.add(tool_use_id)


def _unanswered_tool_calls(pending: set[str]) -> InvalidRequest:
    return InvalidRequest(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(sorted(pending))}"
    )


def validate_openai(body: JSONDict) -> None:
    """Light validation of a chat completions request, with OpenAI's wording."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise InvalidRequest("you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("Invalid 'messages': empty array. Expected an array with minimum length 1.")
    pending: set[str] = set()  # tool_call ids still waiting for a tool message
    offered: set[str] = set()  # ids the latest assistant message asked for
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"Invalid type for 'messages[{i}]': expected an object.")
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise InvalidRequest(f"Invalid value for 'messages[{i}].role': {role!r}.")
        if role != "tool" and pending:
            raise _unanswered_tool_calls(pending)
        if role == "assistant":
            calls = message.get("tool_calls") or []
            offered = {c["id"] for c in calls if isinstance(c, dict) and isinstance(c.get("id"), str)}
            pending = set(offered)
        elif role == "user" and isinstance(message.get("content"), list):
            _validate_openai_parts(i, message["content"])
        elif role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in offered:
                raise InvalidRequest(
                    f"Invalid parameter: messages with role 'tool' must be a response to a preceeding message "
                    f"with 'tool_calls' (messages[{i}], tool_call_id={call_id!r})."
                )
            pending.discard(call_id)
    if pending:
        raise _unanswered_tool_calls(pending)


def _validate_openai_parts(i: int, parts: list[Any]) -> None:
    """A user message's content parts: text, `image_url` (an http(s) or base64 data URL), `file`
    (`file_id`, or `file_data` as a base64 data URL)."""
    for j, part in enumerate(parts):
        where = f"messages[{i}].content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InvalidRequest(f"Missing required parameter: '{where}.text'.")
        elif kind == "image_url":
            url = (part.get("image_url") or {}).get("url")
            if not isinstance(url, str) or not (url.startswith(("http://", "https://")) or _data_url_ok(url)):
                raise InvalidRequest(f"Invalid '{where}.image_url.url': expected a URL or a base64 data URL.")
        elif kind == "file":
            file = part.get("file") or {}
            if not file.get("file_id") and not _data_url_ok(str(file.get("file_data", ""))):
                raise InvalidRequest(f"Invalid '{where}.file': expected file_id or file_data (a base64 data URL).")
        else:
            raise InvalidRequest(f"Invalid value for '{where}.type': {kind!r}.")


def _data_url_ok(url: str) -> bool:
    head, _, data = url.partition(",")
    if not head.startswith("data:") or not head.endswith(";base64") or not data:
        return False
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


FILES_BETA = "files-api-2025-04-14"


def check_file_sources(body: JSONDict, beta: str, files: dict[str, tuple[str, str, bytes]]) -> None:
    """Blocks that name a Files API upload: the request must opt in to the beta, each id must be one
    uploaded here, an image's a picture and a document's a PDF."""
    for i, message in enumerate(body.get("messages") or []):
        content = message.get("content") if isinstance(message, dict) else None
        for j, block in enumerate(content if isinstance(content, list) else []):
            source = block.get("source") if isinstance(block, dict) else None
            if not isinstance(source, dict) or source.get("type") != "file":
                continue
            where = f"messages.{i}.content.{j}.source"
            if FILES_BETA not in beta:
                raise InvalidRequest(f"{where}: file sources need the anthropic-beta header {FILES_BETA}")
            found = files.get(str(source.get("file_id")))
            if found is None:
                raise InvalidRequest(f"{where}.file_id: no such file")
            wanted = "image/" if block.get("type") == "image" else "application/pdf"
            if not found[1].startswith(wanted):
                raise InvalidRequest(f"{where}: the file is {found[1]}, not {wanted}")
