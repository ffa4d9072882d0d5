"""Every route against its published OpenAPI schema, driven by schemathesis (property-based).

The real app (its lifespan, Postgres, Redis) answers in-process through schemathesis's ASGI
transport; /chat talks to the fake model. Each operation gets generated requests, valid and not,
and every answer must be no 5xx, a declared status, a declared content type and a body that
matches its declared schema; authentication must be enforced where the schema says it is.
Two passes: with a valid API key (to get past auth), and without one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

from app.auth.deps import require_api_key
from app.core.config import Settings
from app.core.db import create_engine, create_sessionmaker
from app.core.errors import ErrorEnvelope
from app.main import create_app
from app.openai.errors import OpenAIErrorEnvelope
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key_with

if TYPE_CHECKING:  # schemathesis defines the alias for type checkers only
    from schemathesis.specs.openapi.schemas import OpenApiCase

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
        return await make_key_with(create_sessionmaker(engine))
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
def test_every_route_keeps_its_contract_with_a_key(case: OpenApiCase, app: FastAPI, bearer: dict[str, str]) -> None:
    case.call_and_validate(app=app, headers=bearer, checks=CHECKS, timeout=10)


@schema.parametrize()
@BOUNDED
def test_every_route_keeps_its_contract_without_a_key(case: OpenApiCase, app: FastAPI) -> None:
    response = case.call_and_validate(app=app, checks=CHECKS, timeout=10)
    if case.operation.definition.raw.get("security"):
        # Never served without a key (401, or refused earlier: a wrong method, an unknown path).
        assert not 200 <= response.status_code < 300, (case.operation.label, response.status_code)


# The /v1 door on its own, with more examples: the histories clients send (messages, input items,
# tool calls and results, references) go to the model only when they are valid. The fake model
# validates each request as the real APIs do and records what it refused, so "nothing invalid sent
# upstream" is that it refused nothing. Derandomized, as above: the same examples every run.
V1 = schema.include(path_regex="^/v1/")
TURNS = {"/v1/chat/completions", "/v1/responses"}


@V1.parametrize()
@settings(BOUNDED, max_examples=80)
def test_the_v1_door_sends_the_model_only_valid_requests(
    case: OpenApiCase, app: FastAPI, bearer: dict[str, str], llm_server: FakeLLMServer
) -> None:
    if case.method == "POST" and case.path in TURNS and isinstance(case.body, dict):
        case.body["model"] = "agentchat"  # past the model check, to the history and the model
    case.call_and_validate(app=app, headers=bearer, checks=CHECKS, timeout=10)
    assert llm_server.state.rejections == [], (case.operation.label, case.body, llm_server.state.rejections)


def takes_a_key(dependant: Dependant) -> bool:
    return any(sub.call is require_api_key or takes_a_key(sub) for sub in dependant.dependencies)


def test_every_route_that_takes_a_key_declares_its_errors() -> None:
    """401 and 429 (the rate limit is in the key's dependency) and 503 (the key is looked up in the
    database), in the door's own envelope, wherever a route depends on `require_api_key`."""
    app = create_app(UNSTARTED)
    paths = app.openapi()["paths"]
    keyed = [
        (method.lower(), str(route.path_format))
        # Each route as included (prefixes and router-level dependencies and responses applied).
        for route in iter_route_contexts(app.routes)
        if isinstance(route.original_route, APIRoute) and route.include_in_schema and takes_a_key(route.dependant)
        for method in route.methods or ()
    ]
    # The walk tells keyed routes from the rest (not an empty list that passes everything).
    some = {("post", "/chat"), ("get", "/conversations"), ("post", "/runs/{run_id}/cancel"), ("get", "/v1/models")}
    assert some <= set(keyed)
    assert ("get", "/healthz") not in keyed
    undeclared = {}
    for method, path in keyed:
        declared = paths[path][method]["responses"]
        envelope = (OpenAIErrorEnvelope if path.startswith("/v1/") else ErrorEnvelope).__name__
        wrong = [
            status
            for status in ("401", "429", "503")
            if status not in declared
            or declared[status]["content"]["application/json"]["schema"] != {"$ref": f"#/components/schemas/{envelope}"}
        ]
        if wrong:
            undeclared[f"{method.upper()} {path}"] = wrong
    assert not undeclared, f"routes that take a key, missing or misdeclaring these statuses: {undeclared}"
