"""The floor of a streamed turn's relay, for the benchmarks: the least a paced delta can cost on
FastAPI, the official SDK and Starlette's streaming. NOT part of the service.

`python -m bench.paced` runs it beside the service and the naive handler (issue #28: the service's
CPU per paced delta within 2× of this). It keeps what relaying an answer cannot do without and
drops everything else:

- kept: uvicorn with the service's flags, a FastAPI route with a validated body and a dependency for
  the key (looked up once, then from a dict, as bench/floor_app.py does), the SDK's raw stream
  (`post(stream=True)` on the client the service builds: the SDK's aiohttp client, spans off), one
  `json.loads` per upstream event, one `json.dumps` per delta, and Starlette's StreamingResponse;
- dropped: persistence (no conversation, no messages), logging, metrics, Redis (limits, runs and
  their mirror), the middleware, the agent loop, resumable ids, disconnect handling, error envelopes.

    DATABASE_URL=postgresql+asyncpg://... ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=x \
        python -m uvicorn bench.relay_app:app
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import anthropic
import asyncpg  # type: ignore[import-untyped]
import httpx2
from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel
from starlette.responses import StreamingResponse

from app.auth.keys import hash_key
from app.llm.anthropic import _http_client, _sdk_spans

MODEL = os.environ.get("LLM_MODEL", "claude-sonnet-5-5")
state: dict[str, Any] = {}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    dsn = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
    settings = {"application_name": os.environ.get("APP_NAME", "relay")}
    async with asyncpg.create_pool(dsn, min_size=1, max_size=2, server_settings=settings) as pool:
        client = anthropic.AsyncAnthropic(max_retries=0, http_client=_http_client(1000), open_telemetry=_sdk_spans())
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
    stream: bool = True


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def relay(response: httpx2.Response) -> AsyncIterator[bytes]:
    try:
        yield b"event: start\ndata: {}\n\n"
        buffer = b""
        async for chunk in response.aiter_raw():
            buffer += chunk
            while (end := buffer.find(b"\n\n")) >= 0:
                block, buffer = buffer[:end], buffer[end + 2 :]
                data = next((line[6:] for line in block.split(b"\n") if line.startswith(b"data: ")), None)
                if data is None:
                    continue
                event = json.loads(data)
                if event["type"] == "content_block_delta" and event["delta"]["type"] == "text_delta":
                    yield f"event: delta\ndata: {json.dumps({'text': event['delta']['text']})}\n\n".encode()
                elif event["type"] == "message_stop":
                    yield b"event: end\ndata: {}\n\n"
    finally:
        await response.aclose()


@app.post("/chat")
async def chat(body: ChatIn, _: Annotated[uuid.UUID, Depends(owner)]) -> StreamingResponse:
    request = {
        "model": MODEL,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": body.message}],
        "stream": True,
    }
    streamed = await state["client"].post(
        "/v1/messages",
        content=json.dumps(request).encode(),
        cast_to=httpx2.Response,
        stream=True,
        stream_cls=anthropic.AsyncStream[Any],
    )
    return StreamingResponse(relay(cast(httpx2.Response, streamed)), media_type="text/event-stream")
