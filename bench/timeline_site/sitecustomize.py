"""Loaded by the server that `python -m bench.timeline` starts (this folder is on its PYTHONPATH):
marks when one /chat turn passes each point of its path, and writes each turn's marks out at exit.

A probe, not part of the service: it wraps uvicorn's, FastAPI's, the SDK's and our functions in
the server process only. Each mark is taken once per turn (the first time it is passed).
"""

from __future__ import annotations

import atexit
import importlib.abc
import importlib.util
import inspect
import json
import os
import sys
import time
from typing import Any

OUT = os.environ.get("TIMELINE_OUT")
_current: dict[str, int] = {}
_turns: list[dict[str, int]] = []


def mark(name: str) -> None:
    _current.setdefault(name, time.perf_counter_ns())


def _next_turn() -> None:
    if "in" in _current:
        _turns.append(dict(_current))
    _current.clear()


def _dump() -> None:
    _next_turn()
    if OUT:
        with open(OUT, "w") as sink:
            json.dump(_turns, sink)


def _on_entry(owner: Any, attr: str, name: str) -> None:
    inner = getattr(owner, attr)
    if inspect.iscoroutinefunction(inner):

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            mark(name)
            return await inner(*args, **kwargs)

    else:

        def wrapper(*args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
            mark(name)
            return inner(*args, **kwargs)

    setattr(owner, attr, wrapper)


def _around(owner: Any, attr: str, before: str | None, after: str) -> None:
    inner = getattr(owner, attr)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            mark(before)
        result = await inner(*args, **kwargs)
        mark(after)
        return result

    setattr(owner, attr, wrapper)


def _install() -> None:
    import anthropic._base_client as sdk
    import fastapi.routing
    import httpx2
    import starlette.requests
    from aiohttp.client_proto import ResponseHandler
    from aiohttp.client_reqrep import ClientRequest
    from anthropic._vendor.httpx_aiohttp import AiohttpTransport
    from uvicorn.protocols.http import httptools_impl as uvicorn_http

    import app.auth.deps
    import app.llm.anthropic
    import app.turns.begin
    import app.turns.start
    from app.agent.loop import Agent
    from app.core.middleware import RequestContextMiddleware
    from app.turns.answer import TurnJSONResponse
    from app.turns.store import PostgresTurns
    from app.turns.turn import Turn

    received = uvicorn_http.HttpToolsProtocol.data_received

    def data_received(self: Any, data: bytes) -> None:
        if data.startswith(b"POST /chat "):
            _next_turn()
            mark("in")
        received(self, data)

    uvicorn_http.HttpToolsProtocol.data_received = data_received  # type: ignore[method-assign]
    respond = uvicorn_http.RequestResponseCycle.send

    async def send(self: Any, message: Any) -> None:
        mark("response_start" if message["type"] == "http.response.start" else "response_body")
        await respond(self, message)

    uvicorn_http.RequestResponseCycle.send = send  # type: ignore[method-assign]
    _on_entry(RequestContextMiddleware, "__call__", "middleware")
    _around(starlette.requests.Request, "body", None, "body_read")
    _around(fastapi.routing, "solve_dependencies", "dependencies", "dependencies_solved")
    _on_entry(app.auth.deps, "hash_key", "auth")
    _on_entry(app.turns.start.TurnService, "start", "service_start")
    _around(app.turns.start, "begin_turn", None, "phase_1_begun")
    _on_entry(TurnJSONResponse, "__call__", "response_object")
    _on_entry(app.turns.begin, "_store_new", "insert_runs")
    _on_entry(Agent, "run", "agent")
    _on_entry(sdk.AsyncAPIClient, "post", "sdk_post")
    # The model's client: the SDK's aiohttp one (the service's default LLM_HTTP_CLIENT).
    _on_entry(AiohttpTransport, "handle_async_request", "transport")
    _around(ClientRequest, "send", None, "request_on_wire")
    _on_entry(ResponseHandler, "data_received", "model_answer_arrives")
    _around(httpx2.Response, "aread", None, "model_answer_read")
    _on_entry(app.llm.anthropic, "_whole", "model_answer_parsed")
    _on_entry(Turn, "_record", "phase_3")
    _around(PostgresTurns, "record", "record_sent", "record_committed")


class _AfterAppMain(importlib.abc.MetaPathFinder):
    """Install the marks once app.main has been imported (uvicorn imports it by name)."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != "app.main":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        assert spec is not None
        assert spec.loader is not None
        load = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            load(module)
            _install()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if OUT:
    sys.meta_path.insert(0, _AfterAppMain())
    atexit.register(_dump)
