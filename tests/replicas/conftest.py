"""Two replicas of the service in one test: two app instances behind two real servers, sharing
Postgres and Redis (and nothing else), as they would behind a load balancer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from app.core.config import Settings
from app.main import create_app
from tests.fixtures.app import make_key
from tests.helpers import Live, live_server


@pytest.fixture
def replica_settings(settings: Settings) -> Settings:
    return settings


@pytest.fixture
async def replicas(replica_settings: Settings) -> AsyncIterator[tuple[Live, Live]]:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(live_server(create_app(replica_settings)))
        b = await stack.enter_async_context(live_server(create_app(replica_settings)))
        yield a, b


@pytest.fixture
async def owner_key(replicas: tuple[Live, Live]) -> str:
    return await make_key(replicas[0].state)
