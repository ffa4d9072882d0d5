"""Errors under /v1 in OpenAI's shape and statuses, without touching the service's own envelope.

`{"error": {"message", "type", "param", "code"}}`: `code` is the service's own error type
(`conversation_busy`, `token_quota_exceeded`…, or OpenAI's word where one exists), `type` OpenAI's
category for the status. 422s become 400s (OpenAI's status for bad input), with `param` naming the
field. The request id stays in the X-Request-ID header. `OpenAIRoute` renders every error its
routes raise (AppError, validation, HTTP errors), so the SDKs raise BadRequestError,
AuthenticationError, NotFoundError, ConflictError, RateLimitError, InternalServerError.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import structlog
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app.core.errors import AppError, Conflict, NotFound, ServiceBusy, db_unavailable, is_db_unavailable

log = structlog.get_logger(__name__)

# Our types that OpenAI has a word for.
_CODES = {
    "unauthorized": "invalid_api_key",
    "rate_limited": "rate_limit_exceeded",
    "upstream_rate_limited": "rate_limit_exceeded",
    "token_quota_exceeded": "insufficient_quota",
    "payload_too_large": "string_above_max_length",
}
# What OpenAI answers with where the service's own door uses another status.
_STATUSES = {422: 400, 413: 400}


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorEnvelope(BaseModel):
    error: OpenAIErrorBody


class InvalidParam(AppError):
    """Bad input the schema could not catch: a 400 naming the field."""

    status_code, type, default_message = 400, "invalid_value", "Invalid request."

    def __init__(self, param: str | None, message: str, *, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param, self.code = param, code


class ModelNotFound(NotFound):
    type: ClassVar[str] = "model_not_found"
    param = "model"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model '{model}' does not exist here; GET /v1/models lists those that do.")


class ResponseNotFound(NotFound):
    default_message = "Response not found."

    def __init__(self, param: str | None = None) -> None:
        super().__init__()
        self.param = param


class ItemNotFound(NotFound):
    """An `item_reference` to an id this owner was never given."""

    def __init__(self, item_id: str, param: str) -> None:
        super().__init__(f"Item with id '{item_id}' not found.")
        self.param = param


class ResponseRunning(Conflict):
    type, default_message = "response_in_progress", "The response is still in progress; cancel it first."


class NotCancellable(Conflict):
    type, default_message = "response_not_cancellable", "Only background or streamed responses can be cancelled."


def category(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def openai_error(status: int, message: str, *, code: str | None, param: str | None = None) -> dict[str, Any]:
    status = _STATUSES.get(status, status)
    return {"error": {"message": message, "type": category(status), "param": param, "code": code}}


def error_body(exc: AppError, param: str | None = None) -> dict[str, Any]:
    code = getattr(exc, "code", None) or _CODES.get(exc.type, exc.type)
    return openai_error(exc.status_code, exc.message, code=code, param=getattr(exc, "param", None) or param)


def error_response(exc: AppError, param: str | None = None) -> JSONResponse:
    status = _STATUSES.get(exc.status_code, exc.status_code)
    return JSONResponse(error_body(exc, param), status_code=status, headers=exc.headers or None)


def param_of(loc: tuple[Any, ...]) -> str | None:
    """("body", "messages", 0, "content") → "messages[0].content"; a union member's tag ends it."""
    out = ""
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        if isinstance(part, int):
            if not out:
                break  # a position in a body that is not JSON
            out += f"[{part}]"
        elif not isinstance(part, str) or not part.isidentifier():
            break  # 'list[dict[str,any]]', 'function-after[…]': pydantic's name for a union member
        else:
            out += f".{part}" if out else part
    return out or None


def validation_response(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = param_of(tuple(first.get("loc", ())))
    reason = str(first.get("msg", "Invalid request."))
    missing = first.get("type") == "missing"
    message = f"Missing required parameter: '{param}'." if missing else f"Invalid value for '{param}': {reason}"
    body = openai_error(
        400,
        message if param else reason,
        code="missing_required_parameter" if missing else "invalid_value",
        param=param,
    )
    return JSONResponse(body, status_code=400)


class OpenAIRoute(APIRoute):
    """A route whose errors, wherever they are raised (dependencies, validation, handler), are OpenAI's."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except AppError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                return validation_response(exc)
            except StarletteHTTPException as exc:
                message = exc.detail if isinstance(exc.detail, str) else "Invalid request."
                status = exc.status_code
                return JSONResponse(
                    openai_error(status, message, code=None),
                    status_code=_STATUSES.get(status, status),
                    headers=dict(exc.headers or {}) or None,
                )
            except Exception as exc:
                if not is_db_unavailable(exc):
                    raise  # a bug: the middleware logs it and answers 500
                error = db_unavailable(exc)
                log.warning("http.database_unavailable", error=type(exc).__name__, busy=isinstance(error, ServiceBusy))
                return error_response(error)

        return route


def declared(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for the error statuses a /v1 route can answer, in OpenAI's shape.

    Every route may answer 400 (bad input: never FastAPI's 422) and 503 (the database or the pool,
    the drain); "4XX" says that every client error here has this shape (and keeps FastAPI from
    declaring a 422 it never sends).
    """
    entry = {"model": OpenAIErrorEnvelope, "description": "An error, in OpenAI's shape."}
    codes: list[int | str] = [400, *statuses, 503, "4XX"]
    return {status: dict(entry) for status in dict.fromkeys(codes)}
