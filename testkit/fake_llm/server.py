"""Serving the fake: ``FakeLLMServer`` runs it with uvicorn on a background thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType
from typing import Self

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette

from testkit.fake_llm.app import create_app
from testkit.fake_llm.responses import DropConnection
from testkit.fake_llm.state import FakeLLMState


class _DropFilter(logging.Filter):
    """Hide uvicorn's traceback for connections we drop on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], DropConnection))


_DROP_FILTER = _DropFilter()


def _install_log_filter() -> None:
    # addFilter ignores a filter that is already installed.
    logging.getLogger("uvicorn.error").addFilter(_DROP_FILTER)


class _UvicornServer(uvicorn.Server):
    """uvicorn.Server that wakes hanging responses when shutting down, so it never waits on them."""

    def __init__(self, config: uvicorn.Config, state: FakeLLMState) -> None:
        super().__init__(config)
        self.fake_state = state

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.fake_state.stopping.set()
        await super().shutdown(sockets)


def _uvicorn_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", timeout_graceful_shutdown=3)
    _install_log_filter()  # after Config, which (re)configures uvicorn's loggers
    return config


class FakeLLMServer:
    """Runs the fake on 127.0.0.1 and a free port, in a background thread.

    Use as ``with FakeLLMServer() as fake:`` or ``async with FakeLLMServer() as fake:``;
    ``fake.url`` is the base URL, ``fake.state`` the live FakeLLMState.
    """

    def __init__(
        self, *, host: str = "127.0.0.1", require_openai_key: bool = False, start_timeout: float = 10.0
    ) -> None:
        self.host = host
        self.start_timeout = start_timeout
        self.state = FakeLLMState(require_openai_key=require_openai_key)
        self.app = create_app(self.state)
        self._server: _UvicornServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeLLMServer is not running")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        # Bind here and hand the socket to uvicorn: no race for the port number.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        port = sock.getsockname()[1]
        self.state.stopping.clear()
        server = _UvicornServer(_uvicorn_config(self.app, self.host, port), self.state)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"fake-llm-{port}", daemon=True)
        thread.start()
        self._server, self._thread, self._port = server, thread, port

        deadline = time.monotonic() + self.start_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FakeLLMServer failed to start")
            time.sleep(0.005)
        with socket.create_connection((self.host, port), timeout=self.start_timeout):
            pass  # accepting connections

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self.state.stopping.set()
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = self._thread = None

    def reset(self) -> None:
        self.state.reset()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        # start/stop block briefly; keep the caller's event loop responsive.
        await anyio.to_thread.run_sync(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await anyio.to_thread.run_sync(self.stop)
