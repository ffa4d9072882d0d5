"""Logging set-up: uvicorn's switches survive it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from app.core.logging import configure_logging


@pytest.fixture
def access_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("uvicorn.access")
    saved = (logger.handlers[:], logger.propagate)
    yield logger
    logger.handlers, logger.propagate = saved


def test_no_access_log_stays_off(access_logger: logging.Logger) -> None:
    # What `uvicorn --no-access-log` does before it imports the app (which configures logging).
    access_logger.handlers, access_logger.propagate = [], False
    configure_logging("json", "INFO")
    assert not access_logger.propagate
    assert not access_logger.hasHandlers()  # uvicorn checks exactly this before logging a request


def test_access_log_is_routed_through_ours_when_on(access_logger: logging.Logger) -> None:
    access_logger.handlers, access_logger.propagate = [logging.NullHandler()], False
    configure_logging("json", "INFO")
    assert access_logger.propagate
    assert access_logger.handlers == []
    assert access_logger.hasHandlers()
