"""A real MCP server for the tests, built with the `mcp` package, served over streamable HTTP.

Run it in a subprocess (so a test can kill it for real and start it again on the same port)::

    python -m tests.agent.mcp_server --port 8123 --require-header "X-Tracker-Key=tok"

Tools: `echo`, `add` (answer), `fail` (an isError result), `hang` (sleeps; records that it started
and whether it was cancelled), `huge` (oversized text), `picture` (an image), `secret` (for
allow-list tests). Side doors, outside MCP: `GET /_state` (what the server saw) and
`POST /_tools/add?name=X` / `POST /_tools/remove?name=X` (change the tool list at run time and
announce it to listening clients).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import uvicorn
from mcp.server.mcpserver import Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import InMemorySubscriptionBus, ToolsListChanged
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

ROOT = Path(__file__).resolve().parents[2]
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@dataclass
class Seen:
    calls: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    refused: int = 0  # requests without the required header
    traceparents: list[str] = field(default_factory=list)  # each tools/call's `_meta.traceparent` ("" if none)


def build(require_header: tuple[str, str] | None = None, *, legacy: bool = False) -> ASGIApp:
    seen = Seen()
    bus = InMemorySubscriptionBus()
    server = MCPServer("test-tools", subscriptions=bus, log_level="WARNING")
    # Handshake-era sessions hear of changes by a notification on their session, not the bus.
    legacy_sessions: list[Any] = []

    async def remember_sessions(ctx: Any, call_next: Any) -> Any:
        if ctx.method == "tools/call":
            seen.traceparents.append(str((getattr(ctx, "meta", None) or {}).get("traceparent", "")))
        if ctx.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS and ctx.session not in legacy_sessions:
            legacy_sessions.append(ctx.session)
        return await call_next(ctx)

    server.middleware.append(remember_sessions)

    async def announce_change() -> None:
        await bus.publish(ToolsListChanged())
        for session in list(legacy_sessions):
            try:
                await session.send_tool_list_changed()
            except Exception:
                legacy_sessions.remove(session)

    @server.tool(description="Echo the text back.")
    def echo(text: str) -> str:
        seen.calls.append("echo")
        return f"echo: {text}"

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> str:
        seen.calls.append("add")
        return str(a + b)

    @server.tool(description="Always fails, as a tool result marked isError.")
    def fail(reason: str = "no reason") -> str:
        seen.calls.append("fail")
        raise ToolError(f"failed on purpose: {reason}")

    @server.tool(description="Sleep, then answer.")
    async def hang(seconds: float = 30.0, tag: str = "") -> str:
        seen.calls.append("hang")
        seen.started.append(tag)
        try:
            await anyio.sleep(seconds)
        except anyio.get_cancelled_exc_class():
            seen.cancelled.append(tag)
            raise
        seen.finished.append(tag)
        return f"woke up after {seconds:g}s"

    meetings: dict[str, tuple[list[int], anyio.Event]] = {}

    @server.tool(description="Wait for another call to meet: only concurrent calls both return.")
    async def meet(group: str, parties: int = 2) -> str:
        seen.calls.append("meet")
        arrived, everyone = meetings.setdefault(group, ([0], anyio.Event()))
        arrived[0] += 1
        if arrived[0] >= parties:
            everyone.set()
        with anyio.fail_after(3):
            await everyone.wait()
        return f"met {parties} in {group}"

    @server.tool(description="Far too much text.")
    def huge(chars: int = 50_000) -> str:
        seen.calls.append("huge")
        return "y" * chars

    @server.tool(description="A tiny picture.", structured_output=False)
    def picture() -> list[Any]:
        seen.calls.append("picture")
        return ["here it is", Image(data=PNG, format="png")]

    @server.tool(description="Not for everyone.")
    def secret() -> str:
        seen.calls.append("secret")
        return "the secret"

    def extra_tool(note: str = "") -> str:
        seen.calls.append("extra")
        return f"extra tool says {note or 'hi'}"

    # mcp's custom_route() has no return annotation: mypy sees the decorator it returns as untyped.
    @server.custom_route("/_state", methods=["GET"])  # type: ignore[untyped-decorator]
    async def state(_: Request) -> Response:
        return JSONResponse(seen.__dict__)

    @server.custom_route("/_tools/add", methods=["POST"])  # type: ignore[untyped-decorator]
    async def add_tool(request: Request) -> Response:
        server.add_tool(extra_tool, name=request.query_params["name"], description="Added at run time.")
        await announce_change()
        return JSONResponse({"ok": True})

    @server.custom_route("/_tools/remove", methods=["POST"])  # type: ignore[untyped-decorator]
    async def remove_tool(request: Request) -> Response:
        server.remove_tool(request.query_params["name"])
        await announce_change()
        return JSONResponse({"ok": True})

    app = server.streamable_http_app()
    required = (require_header[0].lower().encode(), require_header[1].encode()) if require_header else None

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/mcp"):
            # The server asserts the header: without it, every MCP request is refused.
            if required is not None and required not in scope["headers"]:
                seen.refused += 1
                await Response("missing or wrong header", status_code=401)(scope, receive, send)
                return
            if legacy:
                # A server from before 2026-07-28: it answers no protocol-version probe, so the
                # client falls back to the initialize handshake.
                scope = dict(scope)
                scope["headers"] = [
                    (k, v)
                    for k, v in scope["headers"]
                    if not (k == b"mcp-protocol-version" and v.decode() not in HANDSHAKE_PROTOCOL_VERSIONS)
                ]
        await app(scope, receive, send)

    return guarded


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class McpServerProcess:
    """The server in a subprocess on a fixed port: start, kill (SIGKILL) and start again."""

    def __init__(self, port: int | None = None, *, require_header: str | None = None, legacy: bool = False) -> None:
        self.port = port or free_port()
        self.require_header = require_header
        self.legacy = legacy
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def start(self, timeout: float = 15.0) -> None:
        args = [sys.executable, "-m", "tests.agent.mcp_server", "--port", str(self.port)]
        if self.require_header:
            args += ["--require-header", self.require_header]
        if self.legacy:
            args.append("--legacy")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"MCP test server exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/_state", timeout=0.5).status_code == 200:
                    return
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("MCP test server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    async def astart(self) -> None:
        await anyio.to_thread.run_sync(self.start)

    async def akill(self) -> None:
        await anyio.to_thread.run_sync(self.kill)

    async def state(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(f"{self.base}/_state")).json()  # type: ignore[no-any-return]

    async def add_tool(self, name: str) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            (await http.post(f"{self.base}/_tools/add", params={"name": name})).raise_for_status()

    async def remove_tool(self, name: str) -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            (await http.post(f"{self.base}/_tools/remove", params={"name": name})).raise_for_status()

    @contextlib.contextmanager
    def running(self) -> Iterator[McpServerProcess]:
        self.start()
        try:
            yield self
        finally:
            self.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description="MCP server for agentchat's tests.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--require-header", help="NAME=VALUE that every MCP request must carry")
    parser.add_argument("--legacy", action="store_true", help="speak only the pre-2026 handshake era")
    args = parser.parse_args()
    header = tuple(args.require_header.split("=", 1)) if args.require_header else None
    app = build(header, legacy=args.legacy)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
