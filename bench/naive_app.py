"""A naive baseline for the benchmarks: POST /chat the way the tutorials write it. NOT part of the service.

The benchmarks run it beside the service (same database, fake model and API key; one uvicorn
worker started with the same flags) so the service's numbers sit next to what the common pattern
costs. Naive on purpose, the way it is usually shipped:

- one `AsyncSession` per request from a `Depends` that yields it, open until the response is sent;
- after each commit, `refresh()` (the async way round expired attributes) opens a new transaction,
  so the connection stays checked out, idle in transaction, across the model call;
- ORM objects added and committed; the official SDK's client; module-level engine and client.

    DATABASE_URL=postgresql+asyncpg://... ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=x \
        python -m uvicorn bench.naive_app:app
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any

from anthropic import AsyncAnthropic
from anthropic.types import MessageParam
from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from app.models import ApiKey, Conversation, Message

MODEL = os.environ.get("LLM_MODEL", "claude-sonnet-5-5")
engine = create_async_engine(
    os.environ["DATABASE_URL"],
    # SQLAlchemy's default (30 s) unless a benchmark queues more streams than the pool holds (bench.paced).
    pool_timeout=float(os.environ.get("NAIVE_POOL_TIMEOUT", "30")),
    connect_args={"server_settings": {"application_name": os.environ.get("APP_NAME", "naive")}},
)
SessionLocal = async_sessionmaker(engine)
client = AsyncAnthropic()  # ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL from the environment
app = FastAPI()


async def get_session() -> AsyncIterator[AsyncSession]:
    async with SessionLocal() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def current_key(session: SessionDep, authorization: Annotated[str, Header()] = "") -> ApiKey:
    digest = hashlib.sha256(authorization.removeprefix("Bearer ").strip().encode()).hexdigest()
    key = await session.scalar(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)))
    if key is None:
        raise HTTPException(status_code=401, detail="Invalid API key")
    return key


class ChatIn(BaseModel):
    message: str
    stream: bool = False


async def save_answer(session: AsyncSession, conversation: Conversation, text: str, stop: str | None) -> Message:
    message = Message(
        conversation_id=conversation.id,
        role="assistant",
        content=[{"type": "text", "text": text}],
        status="complete",
        stop_reason=stop,
        model=MODEL,
    )
    session.add(message)
    await session.commit()
    await session.refresh(message)
    return message


async def relay(session: AsyncSession, conversation: Conversation, question: list[MessageParam]) -> AsyncIterator[str]:
    parts: list[str] = []
    stop: str | None = None
    async for event in await client.messages.create(model=MODEL, max_tokens=1024, messages=question, stream=True):
        if event.type == "content_block_delta" and event.delta.type == "text_delta":
            parts.append(event.delta.text)
            yield f"event: delta\ndata: {json.dumps({'text': event.delta.text})}\n\n"
        elif event.type == "message_delta":
            stop = event.delta.stop_reason
    message = await save_answer(session, conversation, "".join(parts), stop)
    yield f"event: end\ndata: {json.dumps({'message_id': str(message.id)})}\n\n"


@app.post("/chat")
async def chat(body: ChatIn, session: SessionDep, key: Annotated[ApiKey, Depends(current_key)]) -> Any:
    conversation = Conversation(owner_id=key.id, title=body.message[:50])
    session.add(conversation)
    await session.flush()
    content = [{"type": "text", "text": body.message}]
    session.add(Message(conversation_id=conversation.id, role="user", content=content, status="complete"))
    await session.commit()
    await session.refresh(conversation)
    question: list[MessageParam] = [{"role": "user", "content": body.message}]
    if body.stream:
        return StreamingResponse(relay(session, conversation, question), media_type="text/event-stream")
    answer = await client.messages.create(model=MODEL, max_tokens=1024, messages=question)
    text = "".join(block.text for block in answer.content if block.type == "text")
    message = await save_answer(session, conversation, text, answer.stop_reason)
    reply = {"id": str(message.id), "content": text, "status": message.status}
    return {"conversation_id": str(message.conversation_id), "model": answer.model, "message": reply}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
