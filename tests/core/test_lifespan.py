"""The lifespan builds resources in order and releases them in reverse, even when start-up fails."""

from __future__ import annotations

import httpx
import pytest

from app import main
from app.core.config import Settings
from app.main import create_app
from app.state import resources_of


async def test_resources_are_built_and_released(settings: Settings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        state = resources_of(app)
        engine, redis, http = state.engine, state.redis, state.http
        assert redis is not None
        assert await redis.ping()
        assert not http.is_closed
        async with state.sessions() as session:
            assert session.sync_session.expire_on_commit is False
    assert http.is_closed
    assert not hasattr(app.state, "resources")  # taken off before anything was released
    assert engine.pool.checkedout() == 0


async def test_failed_start_releases_what_was_built(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    built: dict[str, httpx.AsyncClient] = {}

    def broken_llm(_: Settings, http: httpx.AsyncClient) -> None:
        built["http"] = http
        raise RuntimeError("provider failed to start")

    monkeypatch.setattr(main, "create_llm", broken_llm)
    app = create_app(settings)
    with pytest.raises(RuntimeError, match="provider failed"):
        async with app.router.lifespan_context(app):
            pass
    assert built["http"].is_closed
