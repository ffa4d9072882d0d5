"""The official `openai` SDK against the real server (uvicorn in this loop) and the fake model."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI
from sqlalchemy import select

from app.models import Conversation, Message
from app.state import Resources
from tests.helpers import Live


def sdk(live: Live, key: str, **options: Any) -> AsyncOpenAI:
    # No retries: a test sees each status as the server sent it.
    return AsyncOpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=20, **options)


@pytest.fixture
async def oai(live: Live, live_key: str) -> AsyncIterator[AsyncOpenAI]:
    async with sdk(live, live_key) as client:
        yield client


async def conversations(state: Resources) -> list[Conversation]:
    async with state.sessions() as session:
        return list((await session.execute(select(Conversation).order_by(Conversation.created_at))).scalars())


async def messages(state: Resources, conversation_id: uuid.UUID) -> list[Message]:
    async with state.sessions() as session:
        query = select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id)
        return list((await session.execute(query)).scalars())


def message_id(openai_id: str) -> uuid.UUID:
    """`chatcmpl-<hex>` / `resp_<hex>` → the assistant message's id."""
    return uuid.UUID(hex=openai_id.rsplit("-", 1)[-1].removeprefix("resp_"))
