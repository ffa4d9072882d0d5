"""One error hierarchy and one envelope: {"error": {"type", "message", "request_id"}}."""

from __future__ import annotations

from typing import Any, ClassVar

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.context import current_request_id

log = structlog.get_logger(__name__)


class ErrorBody(BaseModel):
    type: str
    message: str
    request_id: str | None


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class AppError(Exception):
    status_code: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    default_message: ClassVar[str] = "Internal server error."

    def __init__(self, message: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.message = message or self.default_message
        self.headers = headers or {}
        super().__init__(self.message)


class Unauthorized(AppError):
    status_code, type, default_message = 401, "unauthorized", "A valid API key is required."


class NotFound(AppError):
    status_code, type, default_message = 404, "not_found", "Not found."


class Conflict(AppError):
    status_code, type, default_message = 409, "conflict", "Conflict."


class PayloadTooLarge(AppError):
    status_code, type, default_message = 413, "payload_too_large", "Request body is too large."


class InvalidRequest(AppError):
    status_code, type, default_message = 422, "invalid_request", "Invalid request."


class RateLimited(AppError):
    status_code, type, default_message = 429, "rate_limited", "Too many requests."


class ServiceUnavailable(AppError):
    status_code, type, default_message = 503, "unavailable", "Service temporarily unavailable."


class ShuttingDown(ServiceUnavailable):
    type, default_message = "shutdown", "The server is shutting down; retry on another replica."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class ServiceBusy(ServiceUnavailable):
    type, default_message = "service_busy", "The server is saturated; retry shortly."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


class DatabaseUnavailable(ServiceUnavailable):
    type, default_message = "database_unavailable", "The database is temporarily unavailable."

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"Retry-After": "2"})


def envelope(type_: str, message: str) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "request_id": current_request_id()}}


def error_response(status: int, type_: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(envelope(type_, message), status_code=status, headers=headers)


def responses(*errors: type[AppError]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` for a route, built from the errors it can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    for err in errors:
        entry = out.setdefault(err.status_code, {"model": ErrorEnvelope, "description": ""})
        entry["description"] = " / ".join(filter(None, [entry["description"], err.default_message]))
    return out


_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "Invalid request."


def install_error_handlers(app: FastAPI) -> None:
    async def app_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AppError)
        return error_response(exc.status_code, exc.type, exc.message, exc.headers)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
            # FastAPI answers a body that is not UTF-8 with a bare 400 (and malformed JSON with a
            # 422): one answer for every unreadable body, the one the schema declares.
            return error_response(422, "validation_error", "body: not valid UTF-8 JSON.")
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else type_.replace("_", " ")
        return error_response(exc.status_code, type_, message, dict(exc.headers or {}))

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, "validation_error", _validation_message(exc))

    app.add_exception_handler(AppError, app_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    _declare_envelope_for_validation_errors(app)


_FASTAPI_422 = {"$ref": "#/components/schemas/HTTPValidationError"}


def _declare_envelope_for_validation_errors(app: FastAPI) -> None:
    """FastAPI declares its own 422 body (HTTPValidationError); ours is the envelope: say so.

    Every RequestValidationError is rendered by `validation_error` above, on every route, so the
    published schema must not promise `{"detail": [...]}` anywhere.
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                response = operation.get("responses", {}).get("422")
                media = (response or {}).get("content", {}).get("application/json", {})
                if media.get("schema") == _FASTAPI_422:
                    media["schema"] = {"$ref": "#/components/schemas/ErrorEnvelope"}
                    response["description"] = "The request is invalid; the message says what is wrong."
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        if "ErrorEnvelope" not in components:
            envelope_schema = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(envelope_schema.pop("$defs", {}))
            components["ErrorEnvelope"] = envelope_schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def db_unavailable(exc: BaseException) -> ServiceUnavailable:
    """The 503 for an `is_db_unavailable` failure: every connection busy, or the database unreachable."""
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, PoolTimeout):  # the database is fine; every connection is in use
        return ServiceBusy("Every database connection is busy; retry shortly.")
    return DatabaseUnavailable()


def is_db_unavailable(exc: BaseException) -> bool:
    """True for failures that mean "the database cannot be reached right now", not a bug: through
    SQLAlchemy, or from asyncpg itself (the hot path's `Database.driver()`)."""
    import asyncpg  # type: ignore[import-untyped]
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, sa_exc.TimeoutError | sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    if isinstance(
        exc,
        asyncpg.exceptions.InterfaceError  # the connection is closed or broken
        # A backend terminated while its connection sat in the pool: the FATAL notice arrived,
        # the hang-up not yet, so the next statement finds the protocol still reading the error.
        | asyncpg.exceptions.InternalClientError
        | asyncpg.exceptions.PostgresConnectionError
        | asyncpg.exceptions.OperatorInterventionError  # terminated by an administrator, shutting down
        | asyncpg.exceptions.InsufficientResourcesError  # too many connections, disk full
        | asyncpg.exceptions.QueryCanceledError,  # statement_timeout: the server is too busy
    ):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, ConnectionError | TimeoutError)
