"""The floor of the service's stack, for the benchmarks: the least a JSON /chat turn can cost on
FastAPI, the official SDK and Postgres. NOT part of the service.

`python -m bench.overhead --floor` runs it in the naive baseline's place (the rows then read
`floor /chat`): how far the service is from what its parts cost with nothing else around them.
It keeps what a turn cannot do without and drops everything else:

- kept: uvicorn with the service's flags, a FastAPI route with a validated body and a dependency
  for the key (its lookup cached in a dict after the first request), the SDK's `post` on the
  client the service builds (app/llm/anthropic.py: the SDK's aiohttp client, spans off), and the same
  two statements (one CTE for the conversation and both messages, one UPDATE), each its own round
  trip;
- dropped: logging, metrics, Redis (limits, quotas, runs), the middleware, the agent loop and its
  tools, history, idempotency, disconnect handling, error envelopes, shutdown draining, retries.

    DATABASE_URL=postgresql+asyncpg://... ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=x \
        python -m uvicorn bench.floor_app:app
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import anthropic
import asyncpg  # type: ignore[import-untyped]
import httpx2
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel
from starlette.responses import Response

from app.auth.keys import hash_key
from app.llm.anthropic import _http_client, _sdk_spans

MODEL = os.environ.get("LLM_MODEL", "claude-sonnet-5-5")
# The conversation and both messages in one statement, as the service's phase 1 stores them.
OPEN = """
    WITH conversation AS (
        INSERT INTO conversations (id, owner_id, title, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)
        RETURNING id
    )
    INSERT INTO messages (id, conversation_id, role, content, status, model, input_tokens, output_tokens,
                          cache_read_tokens, cache_creation_tokens, created_at, updated_at)
    SELECT m.id, conversation.id, m.role, m.content, m.status, $7, 0, 0, 0, 0, $4, $4
    FROM conversation CROSS JOIN (VALUES
        ($5::uuid, 'user', $6::jsonb, 'complete'), ($8::uuid, 'assistant', '[]'::jsonb, 'in_progress')
    ) AS m(id, role, content, status)
"""
RECORD = """
    UPDATE messages SET status = 'complete', content = $1::jsonb, stop_reason = $2, updated_at = $3
    WHERE id = $4 AND conversation_id = $5
"""
state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    dsn = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
    settings = {"application_name": os.environ.get("APP_NAME", "floor")}
    async with asyncpg.create_pool(dsn, min_size=1, max_size=10, server_settings=settings) as pool:
        # The SDK as the service builds it; ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL from the environment.
        client = anthropic.AsyncAnthropic(max_retries=0, http_client=_http_client(100), open_telemetry=_sdk_spans())
        async with client:
            state.update(pool=pool, client=client, keys={})
            yield


app = FastAPI(lifespan=lifespan)


async def owner(authorization: Annotated[str, Header()] = "") -> uuid.UUID:
    digest = hash_key(authorization.removeprefix("Bearer "))
    found: uuid.UUID | None = state["keys"].get(digest)
    if found is None:
        async with state["pool"].acquire() as conn:
            found = await conn.fetchval("SELECT id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", digest)
        if found is None:
            raise HTTPException(status_code=401)
        state["keys"][digest] = found
    return found


class ChatIn(BaseModel):
    message: str


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/chat")
async def chat(body: ChatIn, owner_id: Annotated[uuid.UUID, Depends(owner)]) -> Response:
    conversation_id, user_id, assistant_id, now = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), datetime.now(UTC)
    user_content = json.dumps([{"type": "text", "text": body.message}])
    async with state["pool"].acquire() as conn:
        await conn.execute(OPEN, conversation_id, owner_id, "chat", now, user_id, user_content, MODEL, assistant_id)
    request = {"model": MODEL, "max_tokens": 1024, "messages": [{"role": "user", "content": body.message}]}
    response = await state["client"].post("/v1/messages", content=json.dumps(request).encode(), cast_to=httpx2.Response)
    answer = json.loads(response.content)
    async with state["pool"].acquire() as conn:
        await conn.execute(
            RECORD, json.dumps(answer["content"]), answer.get("stop_reason"), now, assistant_id, conversation_id
        )
    message = {"id": str(assistant_id), "role": "assistant", "status": "complete", "content": answer["content"]}
    body_out = json.dumps({"conversation_id": str(conversation_id), "message": message})
    return Response(body_out, media_type="application/json")
