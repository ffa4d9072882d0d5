"""The typed lifespan state and the dependencies that read it."""

from __future__ import annotations

from typing import Annotated, TypedDict

import httpx
from fastapi import Depends, Request
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.agent.registry import ToolRegistry
from app.core.config import Settings
from app.core.lifecycle import Lifecycle
from app.llm.base import ChatModel


class State(TypedDict):
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    redis: Redis | None
    llm: ChatModel
    http: httpx.AsyncClient
    tools: ToolRegistry
    lifecycle: Lifecycle


def get_settings(request: Request) -> Settings:
    settings: Settings = request.state.settings
    return settings


def get_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.state.sessions
    return sessions


def get_llm(request: Request) -> ChatModel:
    llm: ChatModel = request.state.llm
    return llm


def get_tools(request: Request) -> ToolRegistry:
    tools: ToolRegistry = request.state.tools
    return tools


def get_http(request: Request) -> httpx.AsyncClient:
    http: httpx.AsyncClient = request.state.http
    return http


def get_lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.state.lifecycle
    return lifecycle


def get_redis(request: Request) -> Redis | None:
    redis: Redis | None = request.state.redis
    return redis


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(get_sessions)]
LLMDep = Annotated[ChatModel, Depends(get_llm)]
RedisDep = Annotated["Redis | None", Depends(get_redis)]
ToolsDep = Annotated[ToolRegistry, Depends(get_tools)]
LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]
HttpDep = Annotated[httpx.AsyncClient, Depends(get_http)]
