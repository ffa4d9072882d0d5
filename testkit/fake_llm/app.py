"""The fake's Starlette app: ``/v1/messages``, ``/v1/chat/completions`` and the control endpoints."""

from __future__ import annotations

import json
import math

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from testkit.fake_llm.answers import Answer, plan_answer
from testkit.fake_llm.anthropic_wire import (
    _anthropic_error_body,
    _anthropic_tool_results,
    _anthropic_usage,
    anthropic_message,
    anthropic_stream,
)
from testkit.fake_llm.content import JSONDict, _last_user_text, _new_id
from testkit.fake_llm.context_management import manage
from testkit.fake_llm.directives import DirectiveError, Directives, parse_directives
from testkit.fake_llm.openai_wire import (
    _openai_error_body,
    _openai_text,
    _openai_tool_results,
    _openai_usage,
    openai_completion,
    openai_stream,
)
from testkit.fake_llm.responses import Pause, PlannedResponse, Step, _json_bytes
from testkit.fake_llm.state import FakeLLMState
from testkit.fake_llm.summarizer import is_summary_request, summarize
from testkit.fake_llm.validation import (
    FILES_BETA,
    InvalidRequest,
    check_file_sources,
    validate_anthropic,
    validate_openai,
)

_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
_JSON_HEADERS = {"content-type": "application/json"}


def _bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def create_app(state: FakeLLMState | None = None, *, require_openai_key: bool = False) -> Starlette:
    """Build the fake's ASGI app. Each app has its own state (``app.state.fake``).

    ``require_openai_key`` only applies when no ``state`` is passed (it is a state field).
    """
    fake = state if state is not None else FakeLLMState(require_openai_key=require_openai_key)
    files: dict[str, tuple[str, str, bytes]] = {}  # Files API uploads: id -> (filename, media type, bytes)

    async def read_body(request: Request) -> JSONDict | None:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        fake.record(body if isinstance(body, dict) else None, traceparent=request.headers.get("traceparent"))
        return body if isinstance(body, dict) else None

    def error_response(
        dialect: str, status: int, message: str, *, directives: Directives | None = None, retryable: bool = False
    ) -> PlannedResponse:
        request_id = _new_id("req_fake_")
        headers = {**_JSON_HEADERS, "request-id": request_id}
        if dialect == "anthropic":
            payload = _anthropic_error_body(status, message, request_id)
        else:
            payload = _openai_error_body(status, message)
        if retryable:
            headers["retry-after-ms"] = "10"
        else:
            headers["x-should-retry"] = "false"
            if status in (429, 529):
                headers["retry-after"] = "7"
        before = [Pause(directives.delay_first)] if directives and directives.delay_first else []
        return PlannedResponse(fake, status=status, headers=headers, body=[_json_bytes(payload)], before_headers=before)

    def reject(dialect: str, status: int, message: str) -> PlannedResponse:
        fake.reject(message)
        return error_response(dialect, status, message)

    def scripted_failure(dialect: str, directives: Directives, user_text: str, stream: bool) -> PlannedResponse | None:
        """A failure requested by [[status]], [[fail_first]] or JSON-mode [[midstream_error]]."""
        if directives.midstream_error and not stream:
            return error_response(dialect, 529, "Overloaded", directives=directives)
        if directives.status is not None:
            return error_response(dialect, directives.status, f"Fake error {directives.status}", directives=directives)
        if directives.fail_first is not None:
            count, status = directives.fail_first
            if fake.bump_fail_count(user_text) <= count:
                return error_response(
                    dialect, status, f"Fake transient error {status}", directives=directives, retryable=True
                )
        return None

    def sse_reply(directives: Directives, steps: list[Step]) -> PlannedResponse:
        before = [Pause(directives.delay_first)] if directives.delay_first else []
        headers = {**_SSE_HEADERS, "request-id": _new_id("req_fake_")}
        return PlannedResponse(fake, status=200, headers=headers, body=steps, before_headers=before, is_stream=True)

    def json_reply(directives: Directives, payload: JSONDict) -> PlannedResponse:
        before = [Pause(directives.delay_first)] if directives.delay_first else []
        if directives.hang:
            before.append(Pause(math.inf))
        elif directives.slow:
            before.append(Pause(directives.slow))
        headers = {**_JSON_HEADERS, "request-id": _new_id("req_fake_")}
        return PlannedResponse(fake, status=200, headers=headers, body=[_json_bytes(payload)], before_headers=before)

    async def messages(request: Request) -> PlannedResponse:
        body = await read_body(request)
        # SDK 2.x sends the API key as "Authorization: Bearer"; older clients use x-api-key.
        if not request.headers.get("x-api-key") and not _bearer_token(request):
            return reject("anthropic", 401, "x-api-key or Authorization: Bearer header is required")
        if not request.headers.get("anthropic-version"):
            return reject("anthropic", 400, "anthropic-version: header is required")
        if body is None:
            return reject("anthropic", 400, "The request body is not valid JSON.")
        try:
            validate_anthropic(body)
            check_file_sources(body, request.headers.get("anthropic-beta", ""), files)
            managed = manage(body, request.headers.get("anthropic-beta", ""), fake.compactions)
            user_text = _last_user_text(body["messages"])
            directives, clean_text = parse_directives(user_text)
        except (InvalidRequest, DirectiveError) as exc:
            return reject("anthropic", 400, str(exc))

        stream = bool(body.get("stream"))
        if is_summary_request(body):  # the service's summarizer: a summary, whatever the directives say
            summary = summarize(body)
            if summary is None:
                return error_response("anthropic", 500, "Fake summarizer failure")
            answer, none = Answer(summary, [], "end_turn"), Directives()
            if stream:
                return sse_reply(none, anthropic_stream(answer, body["model"], _anthropic_usage(body), none))
            return json_reply(none, anthropic_message(answer, body["model"], _anthropic_usage(body)))
        if failure := scripted_failure("anthropic", directives, user_text, stream):
            return failure
        # The model reads the context as its management left it (from the latest compaction block on).
        results, rounds = _anthropic_tool_results(managed.messages)
        answer = plan_answer(directives, clean_text, results, rounds, "toolu_fake")
        if managed.pause and managed.compaction is not None:  # pause_after_compaction: the block alone
            answer = Answer("", [], "compaction")
        usage = _anthropic_usage({**body, "messages": managed.messages})
        usage = managed.usage(usage, body.get("system"), answer.output_tokens)
        if stream:
            return sse_reply(directives, anthropic_stream(answer, body["model"], usage, directives, managed))
        return json_reply(directives, anthropic_message(answer, body["model"], usage, managed))

    async def chat_completions(request: Request) -> PlannedResponse:
        body = await read_body(request)
        if fake.require_openai_key and not _bearer_token(request):
            return reject(
                "openai", 401, "You didn't provide an API key. Provide it in the Authorization header (Bearer)."
            )
        if body is None:
            return reject("openai", 400, "We could not parse the JSON body of your request.")
        try:
            validate_openai(body)
            messages = body["messages"]
            user_text = next(
                (t for m in reversed(messages) if m.get("role") == "user" and (t := _openai_text(m.get("content")))), ""
            )
            directives, clean_text = parse_directives(user_text)
        except (InvalidRequest, DirectiveError) as exc:
            return reject("openai", 400, str(exc))

        stream = bool(body.get("stream"))
        if failure := scripted_failure("openai", directives, user_text, stream):
            return failure
        results, rounds = _openai_tool_results(messages)
        answer = plan_answer(directives, clean_text, results, rounds, "call_fake")
        usage = _openai_usage(body, answer)
        if stream:
            options = body.get("stream_options")
            include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return sse_reply(directives, openai_stream(answer, body["model"], usage, directives, include_usage))
        return json_reply(directives, openai_completion(answer, body["model"], usage))

    async def upload_file(request: Request) -> JSONResponse:
        """The Files API (beta): a multipart upload, kept here so messages can name it by id."""
        if FILES_BETA not in request.headers.get("anthropic-beta", ""):
            return JSONResponse(_anthropic_error_body(400, "The Files API needs anthropic-beta: files-api", "r"), 400)
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            return JSONResponse(_anthropic_error_body(400, "file: Field required", "r"), 400)
        data = await upload.read()
        file_id = _new_id("file_fake_")
        media_type = upload.content_type or "application/octet-stream"
        files[file_id] = (upload.filename or "file", media_type, data)
        created = "2026-01-01T00:00:00Z"
        meta = {"id": file_id, "type": "file", "filename": upload.filename, "mime_type": media_type}
        return JSONResponse({**meta, "size_bytes": len(data), "created_at": created, "downloadable": False})

    async def stats(_: Request) -> JSONResponse:
        return JSONResponse(fake.stats())

    async def recorded(_: Request) -> JSONResponse:
        return JSONResponse(fake.request_bodies())

    async def reset(_: Request) -> JSONResponse:
        fake.reset()
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/v1/messages", messages, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/files", upload_file, methods=["POST"]),
            Route("/_stats", stats, methods=["GET"]),
            Route("/_requests", recorded, methods=["GET"]),
            Route("/_reset", reset, methods=["POST"]),
        ]
    )
    app.state.fake = fake
    app.state.files = files
    return app
