"""A replica killed with SIGKILL mid-stream: another one notices its lease lapse and settles its run."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
from sqlalchemy import select, text

from app.core.config import Settings
from app.main import create_app
from app.models import Message
from testkit.fake_llm import FakeLLMServer
from tests.fixtures.app import make_key
from tests.helpers import eventually, live_server, sse_events
from tests.resilience.server import ServerProcess

LEASE = 2.0


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_a_killed_replicas_run_is_settled_by_another(
    settings: Settings, tmp_path: Path, llm_server: FakeLLMServer
) -> None:
    settings = settings.model_copy(update={"run_lease_seconds": LEASE})
    doomed = ServerProcess(settings, tmp_path / "doomed.log")
    await doomed.start(RUN_LEASE_SECONDS=str(LEASE), LLM_READ_TIMEOUT="30", TURN_TIMEOUT="60")
    try:
        async with live_server(create_app(settings)) as survivor, httpx.AsyncClient(timeout=30) as http:
            key = await make_key(survivor.state)
            first = await http.post(f"{survivor.url}/chat", json={"message": "hello"}, headers=auth(key))
            conversation_id = first.json()["conversation_id"]

            body = {
                "message": "[[words:200]] [[slow:0.1]]",
                "conversation_id": conversation_id,
                "stream": True,
                "on_disconnect": "continue",
            }
            seen = ""
            async with http.stream("POST", f"{doomed.url}/chat", json=body, headers=auth(key)) as r:
                async for chunk in r.aiter_text():
                    seen += chunk
                    if seen.count("event: delta") >= 5:
                        break
            run_id = sse_events(seen.split("\n\n", 1)[0] + "\n\n")[0]["data"]["run_id"]
            events_key = f"{settings.redis_key_prefix}run:{run_id}:events"

            async def mirrored() -> bool:  # the deltas so far have reached the run log
                return int(await survivor.state.redis.xlen(events_key)) >= 6  # type: ignore[union-attr]

            await eventually(mirrored, timeout=2)

            follower = asyncio.create_task(
                http.get(f"{survivor.url}/runs/{run_id}/events", headers={**auth(key), "Last-Event-ID": "3"})
            )
            doomed.kill()  # SIGKILL: no drain, no record, no lock release

            followed = await asyncio.wait_for(follower, timeout=LEASE * 4)
            events = sse_events(followed.text)
            assert events[-1]["event"] == "error"
            assert events[-1]["data"]["error"]["type"] == "interrupted"
            ids = [int(e["id"]) for e in events]
            assert ids == list(range(4, 4 + len(ids)))  # nothing missed after Last-Event-ID, in order

            async def settled() -> bool:
                async with survivor.state.sessions() as session:
                    row = await session.get(Message, uuid.UUID(run_id))
                    return row is not None and row.status != "in_progress"

            await eventually(settled, timeout=LEASE * 2)
            async with survivor.state.sessions() as session:
                row = (await session.execute(select(Message).where(Message.id == uuid.UUID(run_id)))).scalar_one()
            assert row.status == "incomplete"
            assert row.error is not None
            assert row.error["type"] == "interrupted"
            assert row.content[0]["text"].startswith("word1 word2 word3 word4 word5")

            # The dead turn's lock is freed at once (not after LOCK_TTL_SECONDS), and the history replays.
            after = await http.post(
                f"{survivor.url}/chat",
                json={"message": "still there?", "conversation_id": conversation_id},
                headers=auth(key),
            )
            assert after.status_code == 200, after.text
            assert survivor.state.metrics.runs_settled._value.get() == 1
    finally:
        doomed.kill()


async def test_answers_a_dead_process_left_in_progress_are_swept(settings: Settings) -> None:
    """Any process (JSON turns, no Redis): an answer older than any turn can run is settled."""
    async with live_server(create_app(settings)) as first, httpx.AsyncClient(timeout=30) as http:
        key = await make_key(first.state)
        done = await http.post(f"{first.url}/chat", json={"message": "hello"}, headers=auth(key))
        conversation_id = uuid.UUID(done.json()["conversation_id"])
    # As if two turns died with their process: one an hour ago, one a moment ago (maybe still running);
    # and an answer created an hour ago, paused for approval, continued a moment ago (running: its age
    # counts from its claim, updated_at).
    stale, fresh, continued = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with live_server(create_app(settings)) as probe:
        async with probe.state.sessions() as session, session.begin():
            for message_id, created, updated in (
                (stale, "1 hour", "1 hour"),
                (fresh, "1 second", "1 second"),
                (continued, "1 hour", "1 second"),
            ):
                await session.execute(
                    text(
                        "INSERT INTO messages (id, conversation_id, role, content, status, input_tokens, "
                        "output_tokens, cache_read_tokens, cache_creation_tokens, created_at, updated_at) "
                        f"VALUES (:id, :cid, 'assistant', '[]', 'in_progress', 0, 0, 0, 0, "
                        f"now() - interval '{created}', now() - interval '{updated}')"
                    ),
                    {"id": message_id, "cid": conversation_id},
                )
    async with live_server(create_app(settings)) as restarted:  # its sweep runs at start-up

        async def swept() -> bool:
            async with restarted.state.sessions() as session:
                row = await session.get(Message, stale)
                return row is not None and row.status == "incomplete"

        await eventually(swept, timeout=5)
        async with restarted.state.sessions() as session:
            stale_row, fresh_row = await session.get(Message, stale), await session.get(Message, fresh)
        assert stale_row is not None
        assert stale_row.error is not None
        assert stale_row.error["type"] == "interrupted"
        assert fresh_row is not None
        assert fresh_row.status == "in_progress"  # younger than any turn's deadline: left alone
        async with restarted.state.sessions() as session:
            continued_row = await session.get(Message, continued)
        assert continued_row is not None
        assert continued_row.status == "in_progress"
