"""structlog configured once: every line, ours or stdlib's (uvicorn, SQLAlchemy), carries request_id."""

from __future__ import annotations

import functools
import logging
import re
import sys
from typing import Any, Literal

import structlog
from structlog.types import EventDict, Processor

from app.core.telemetry import add_trace_ids

# Values that look like credentials are masked wherever they appear in a log line. One pattern,
# one pass per string: each alternative keeps its one group (a prefix that may stay) and masks the rest.
_SECRET_VALUE = re.compile(
    "|".join(
        (
            r"(ak_[A-Za-z0-9]{8})_[A-Za-z0-9_-]{16,}",  # our API keys: the display prefix stays
            # Anthropic (sk-ant-…) and OpenAI-style (sk-…, sk-proj-…, sk-svcacct-…) keys.
            r"(?<![A-Za-z0-9])(sk-(?:ant-|proj-|svcacct-|admin-)?)[A-Za-z0-9_-]{8,}",
            r"((?i:bearer)\s+)[^\s\"']+",
            # The password of a URL (postgresql://user:secret@host, redis://:secret@host): user:***@host.
            r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)[^\s@/]+(?=@)",
        )
    )
)
_SECRET_KEYS = frozenset(
    {"authorization", "proxy_authorization", "cookie", "set_cookie", "api_key", "apikey", "x_api_key", "token"}
)
_SECRET_KEY_PARTS = ("password", "passwd", "secret")
_SECRET_KEY_SUFFIXES = ("_token", "_api_key", "_apikey")  # github_token, openai_api_key (not input_tokens)
_MAX_DEPTH = 6


def _keep_prefix(match: re.Match[str]) -> str:
    return next(group for group in match.groups() if group is not None) + "***"


def _mask(text: str) -> str:
    # Each alternative of the pattern needs one of these: most strings (ids, names, statuses) skip
    # the regex, a tenth of its cost (every string field of every line comes here).
    if "ak_" in text or "sk-" in text or "://" in text or "bearer" in text.lower():
        return _SECRET_VALUE.sub(_keep_prefix, text)
    return text


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """A field whose value is a secret whatever it looks like: openai_api_key, db_password, set-cookie…

    Cached: a log line asks it of each of its fields, and a service's field names are few."""
    key = name.lower().replace("-", "_")
    return key in _SECRET_KEYS or key.endswith(_SECRET_KEY_SUFFIXES) or any(p in key for p in _SECRET_KEY_PARTS)


def _redact(value: Any, depth: int = 0) -> Any:
    """Strings masked; dicts, lists and tuples walked (secret-named keys blanked), to a bounded depth."""
    if isinstance(value, str):
        return _mask(value)
    if depth >= _MAX_DEPTH:
        return value if isinstance(value, int | float | bool | None) else "***"
    if isinstance(value, dict):
        secret = is_secret_key
        return {k: "***" if isinstance(k, str) and secret(k) else _redact(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str) and is_secret_key(value[0]):
            items = [value[0], "***"]  # a (name, value) header pair
        else:
            items = [_redact(item, depth + 1) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    return value


def redact_secrets(_: Any, __: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)  # uvicorn's ANSI duplicate of the message
    for key, value in list(event_dict.items()):
        if is_secret_key(key):
            event_dict[key] = "***"
        elif isinstance(value, str | dict | list | tuple):
            event_dict[key] = _redact(value)
    return event_dict


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test capture, a redirected stream)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


class _StderrLogger:
    """structlog's output for our own lines: each rendered once and written to whatever
    sys.stderr is at the time (line-buffered), without a stdlib LogRecord and formatter pass."""

    __slots__ = ("name",)

    def __init__(self, name: str | None = None) -> None:
        self.name = name or ""

    def msg(self, message: str) -> None:
        sys.stderr.write(message + "\n")

    debug = info = warning = warn = error = critical = exception = fatal = log = msg


def _stderr_logger(*args: Any) -> _StderrLogger:
    return _StderrLogger(args[0] if args and isinstance(args[0], str) else None)


def configure_logging(fmt: Literal["json", "console"], level: str) -> None:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,  # trace_id and span_id on lines inside a span, when traces are on (one global read when off)
    ]
    renderer: Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, redact_secrets, renderer],
        logger_factory=_stderr_logger,
        # A line below LOG_LEVEL costs one method call that does nothing.
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        cache_logger_on_first_use=True,
    )
    # Lines from stdlib loggers (uvicorn, SQLAlchemy, the SDKs) go through the same processors.
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    )
    handler = _StderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    # uvicorn installs its own handlers; route its lines through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if name == "uvicorn.access" and not logger.propagate and not logger.handlers:
            continue  # `--no-access-log` left it switched off: keep it so
        logger.handlers = []
        logger.propagate = True
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    # The SDKs log request details (including headers) at DEBUG; keep them quiet.
    for name in ("anthropic", "httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
