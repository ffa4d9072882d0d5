"""Every route against its published OpenAPI schema, driven by schemathesis (property-based).

The real app (its lifespan, Postgres, Redis) answers in-process through schemathesis's ASGI
transport; /chat talks to the fake model. Each operation gets generated requests, valid and not,
and every answer must be no 5xx, a declared status, a declared content type and a body that
matches its declared schema; authentication must be enforced where the schema says it is.
Two passes: with a valid API key (to get past auth), and without one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.main import create_app
from tests.fixtures.app import make_key

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]
# Bounded, so both passes over every route finish in well under a minute.
# Derandomized (the same inputs every run, so CI is reproducible) and no example database on disk.
BOUNDED = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)


async def key_for(settings: Settings) -> str:
    engine = create_engine(settings.model_copy(update={"app_name": "agentchat-test-setup"}))
    try:
        return await make_key({"sessions": create_sessionmaker(engine)})  # type: ignore[arg-type]
    finally:
        await engine.dispose()


# The published schema, read from an app that is built but never started (the schema does not
# depend on settings); each test sends its requests to an app of its own, started on first use.
UNSTARTED = Settings(database_url="sqlite+aiosqlite:///:memory:", llm_provider="offline", docs_enabled=True)
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(UNSTARTED))


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    yield create_app(settings)
    asgi.shutdown_lifespans()  # its lifespan ran in schemathesis's event-loop thread


@pytest.fixture
async def bearer(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {await key_for(settings)}"}


@schema.parametrize()
@BOUNDED
def test_every_route_keeps_its_contract_with_a_key(
    case: schemathesis.Case, app: FastAPI, bearer: dict[str, str]
) -> None:
    case.call_and_validate(app=app, headers=bearer, checks=CHECKS, timeout=10)


@schema.parametrize()
@BOUNDED
def test_every_route_keeps_its_contract_without_a_key(case: schemathesis.Case, app: FastAPI) -> None:
    response = case.call_and_validate(app=app, checks=CHECKS, timeout=10)
    if case.operation.definition.raw.get("security"):
        # Never served without a key (401, or refused earlier: a wrong method, an unknown path).
        assert not 200 <= response.status_code < 300, (case.operation.label, response.status_code)
