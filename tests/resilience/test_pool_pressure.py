"""A burst far larger than the pool queues briefly or fails fast with 503 — never a 500."""

from __future__ import annotations

import asyncio
from collections import Counter

from app.core.config import Settings
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key, running_app


async def test_pool_exhaustion_is_503_with_retry_after(settings: Settings, llm_server: FakeLLMServer) -> None:
    # One key, 60 turns at once: the per-key turns-in-flight cap would answer first (429), so it is off.
    tiny = settings.model_copy(
        update={"db_pool_size": 1, "db_max_overflow": 0, "db_pool_timeout": 0.05, "max_turns_in_flight_per_key": 0}
    )
    async with running_app(tiny) as (_, state, client):
        auth = {"Authorization": f"Bearer {await make_key(state)}"}
        responses = await asyncio.gather(
            *(client.post("/chat", json={"message": f"[[words:3]] burst {n}"}, headers=auth) for n in range(60))
        )
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0  # the pool really was exhausted
        for r in responses:
            if r.status_code == 503:
                assert r.json()["error"]["type"] == "service_busy"
                assert r.headers["retry-after"]
        assert state.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        # The pool's own high-water mark: full, never past its one connection.
        peak = next(
            line
            for line in (await client.get("/metrics")).text.splitlines()
            if line.startswith("agentchat_db_pool_checked_out_max ")
        )
        assert float(peak.split()[-1]) == 1
        # And the service is fine afterwards.
        assert (await client.post("/chat", json={"message": "after"}, headers=auth)).status_code == 200
