"""Tools from remote MCP servers (MCP_SERVERS): connected, listed, offered, called, reconnected.

One `McpServer` per configured server runs a reconnect loop in a task of the `McpTools` task
group, which the lifespan enters on its AsyncExitStack: each connection (an `mcp.Client` over
streamable HTTP) is entered and closed inside that task, so closing the group closes every
session. While connected, the server's tools are in the ToolRegistry as `<server>__<tool>`;
when the connection fails or drops they are removed, and the loop reconnects with backoff.

Changes to a server's tool list arrive as a `tools/list_changed` event (a `subscriptions/listen`
stream on 2026-07-28 connections, the notification on older ones); the list is also fetched again
every MCP_PING_SECONDS, which doubles as the liveness check.

What a server returns is untrusted text: it reaches the model only as a tool result (capped by
the agent loop), and images or resources only as a short placeholder.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx2
import mcp_types
import structlog
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError, SubscriptionLost
from mcp_types import CONNECTION_CLOSED
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from app.agent.mcp.tools import (
    BACKSTOP_SECONDS,
    MAX_DESCRIPTION_CHARS,
    MAX_LIST_PAGES,
    SSE_READ_TIMEOUT,
    McpArguments,
    McpTool,
    describe,
    input_problems,
    model_tool_name,
    render_result,
    schema_validator,
)
from app.agent.registry import ToolRegistry
from app.agent.tools.base import ToolContext, ToolError
from app.core.config import Settings
from app.core.mcp_config import McpServerConfig
from app.core.metrics import Metrics

log = structlog.get_logger(__name__)


class McpServer:
    """One configured server: its connection loop, its tools, its calls."""

    def __init__(self, config: McpServerConfig, settings: Settings, registry: ToolRegistry, metrics: Metrics) -> None:
        self.config, self.settings, self.registry, self.metrics = config, settings, registry, metrics
        self.name = config.name
        self.source = f"mcp:{config.name}"
        self.timeout = config.timeout or settings.agent_tool_timeout
        self._allowed = set(config.tools) if config.tools is not None else None
        self._client: Client | None = None
        self._up = False
        self._wake = anyio.Event()
        self._tools: dict[str, McpTool] = {}
        self._listed: list[tuple[str, str, str, dict[str, Any]]] = []
        self.attempted = anyio.Event()  # the first connection attempt has succeeded or failed
        self._set_status("connecting")

    # ------------------------------------------------------------------ connection

    def _set_status(self, status: str) -> None:
        self.registry.set_status(self.source, status)
        self.metrics.mcp_up.labels(self.name).set(1 if status == "ok" else 0)

    async def run(self) -> None:
        """Connect, serve, and reconnect with exponential backoff (and jitter) until cancelled."""
        delay = self.settings.mcp_reconnect_min_seconds
        while True:
            self._up = False
            try:
                await self._connection()
            except Exception as exc:  # a connection that failed or dropped: say why, then try again
                status = f"down ({describe(exc)})"
            else:
                status = "down (closed)"
            finally:
                self._client = None
                self._tools, self._listed = {}, []
                self.registry.remove(self.source)
                self.attempted.set()
            if self._up:  # it worked for a while: start the backoff again from the bottom
                delay = self.settings.mcp_reconnect_min_seconds
            self._set_status(status)
            wait = delay * random.uniform(0.8, 1.2)
            log.warning("mcp.server.down", server=self.name, reason=status, retry_in=round(wait, 2))
            await anyio.sleep(wait)
            delay = min(delay * 2, self.settings.mcp_reconnect_max_seconds)

    async def _connection(self) -> None:
        """One connection, from connect to drop (an exception says why)."""
        headers = {key: value.get_secret_value() for key, value in self.config.headers.items()}
        timeout = httpx2.Timeout(30.0, connect=self.settings.mcp_connect_timeout, read=SSE_READ_TIMEOUT)
        # Bounds connecting and the first listing; lifted once the tools are offered. A scope, not
        # fail_after: the client's task groups are entered inside it and must exit inside it too.
        with anyio.CancelScope(deadline=anyio.current_time() + self.settings.mcp_connect_timeout) as connecting:
            async with (
                httpx2.AsyncClient(headers=headers, timeout=timeout, follow_redirects=False) as http,
                Client(
                    streamable_http_client(self.config.url, http_client=http),
                    cache=None,  # tools are listed on purpose (connect, change, ping): always from the server
                    message_handler=self._on_message,
                    client_info=mcp_types.Implementation(name="agentchat", version="0.1.0"),
                ) as client,
            ):
                self._client = client
                await self._refresh(client)
                connecting.deadline = math.inf
                self._up = True
                self._set_status("ok")
                self.attempted.set()
                log.info(
                    "mcp.server.connected",
                    server=self.name,
                    protocol=client.protocol_version,
                    tools=sorted(self._tools),
                )
                await self._watch(client)
        if connecting.cancelled_caught:
            raise TimeoutError("connecting took too long")

    async def _watch(self, client: Client) -> None:
        """Until the connection fails: re-list on a change event, a suspicious call, or every ping."""
        async with anyio.create_task_group() as group:
            if client.protocol_version in MODERN_PROTOCOL_VERSIONS:
                group.start_soon(self._listen, client)
            while True:
                with anyio.move_on_after(self.settings.mcp_ping_seconds):
                    await self._wake.wait()
                self._wake = anyio.Event()
                with anyio.fail_after(self.settings.mcp_connect_timeout):
                    await self._refresh(client)

    async def _listen(self, client: Client) -> None:
        while True:
            try:
                async with client.listen(tools_list_changed=True) as subscription:
                    if not subscription.honored.tools_list_changed:
                        return  # the periodic listing still notices changes
                    async for _ in subscription:
                        self._wake.set()
                return  # closed gracefully by the server: it may be going away; the next listing tells
            except ListenNotSupportedError:
                return
            except MCPError as exc:
                log.info("mcp.listen.refused", server=self.name, error=describe(exc))
                return
            except SubscriptionLost:
                self._wake.set()  # re-list now: a dead server fails it and we reconnect
                await anyio.sleep(self.settings.mcp_reconnect_min_seconds)

    async def _on_message(self, message: Any) -> None:
        # Handshake-era servers announce changes with a plain notification.
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._wake.set()

    async def _refresh(self, client: Client) -> None:
        listed: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        specs = self._specs(listed)
        if specs == self._listed:
            return  # the usual case for a periodic listing: nothing to rebuild
        tools = [self._build(*spec) for spec in specs]
        refused = self.registry.replace(self.source, tools)
        self._listed = specs
        self._tools = {tool.name: tool for tool in tools if tool.name not in refused}
        if refused:
            log.warning("mcp.tools.refused", server=self.name, tools=refused, reason="name already taken")
        if self._up:  # at connect, mcp.server.connected lists them
            log.info("mcp.tools.changed", server=self.name, tools=sorted(self._tools))

    def _specs(self, listed: Sequence[mcp_types.Tool]) -> list[tuple[str, str, str, dict[str, Any]]]:
        """(model name, remote name, description, input schema) of each tool on offer, allow-list applied."""
        specs: list[tuple[str, str, str, dict[str, Any]]] = []
        seen: set[str] = set()
        for remote in listed:
            if self._allowed is not None and remote.name not in self._allowed:
                continue
            name = model_tool_name(self.name, remote.name)
            if name in seen:
                continue
            seen.add(name)
            schema = {"type": "object", **remote.input_schema}
            description = (remote.description or remote.title or remote.name)[:MAX_DESCRIPTION_CHARS]
            specs.append((name, remote.name, description, schema))
        return specs

    def _build(self, name: str, remote: str, description: str, schema: dict[str, Any]) -> McpTool:
        return McpTool(
            name=name,
            description=description,
            input_model=McpArguments,
            run=self._runner(name, remote, schema_validator(schema)),
            timeout=self.timeout + BACKSTOP_SECONDS,
            server=self.name,
            remote_name=remote,
            input_schema=schema,
        )

    # ------------------------------------------------------------------ calls

    def _runner(
        self, name: str, remote: str, validator: Any | None
    ) -> Callable[[McpArguments, ToolContext], Awaitable[str]]:
        async def run(data: McpArguments, _: ToolContext) -> str:
            return await self.call(name, remote, validator, dict(data.model_extra or {}))

        return run

    async def call(self, name: str, remote: str, validator: Any | None, arguments: dict[str, Any]) -> str:
        """One tools/call; every failure the model can act on is a ToolError (an is_error result)."""
        started, outcome = time.perf_counter(), "ok"
        try:
            if problems := input_problems(validator, arguments):
                outcome = "invalid_input"
                raise ToolError(f"Invalid input for {name}: {'; '.join(problems)}.")
            client = self._client
            if client is None:
                outcome = "unavailable"
                raise ToolError(f"The MCP server {self.name!r} is not connected right now; try again later.")
            try:
                with anyio.fail_after(self.timeout):
                    # Cancelled (time-out, or the turn stopped): the SDK tells the server, which
                    # stops the call — a cancellation notification, or on 2026-07-28 the request's
                    # own stream closed.
                    result = await client.call_tool(remote, arguments)
            except TimeoutError:
                outcome = "timeout"
                raise ToolError(f"The tool {name} timed out after {self.timeout:g} seconds.") from None
            except MCPError as exc:
                self._wake.set()  # is the connection still there? the runner re-lists at once
                if exc.code == CONNECTION_CLOSED:
                    outcome = "unavailable"
                    raise ToolError(f"The MCP server {self.name!r} dropped the connection during the call.") from None
                outcome = "protocol_error"
                raise ToolError(f"The MCP server {self.name!r} refused the call: {exc.message[:500]}") from None
            except Exception as exc:  # a result the SDK could not read, an input-required round, …
                outcome = "bad_result"
                log.warning("mcp.call.failed", server=self.name, tool=remote, error=describe(exc))
                raise ToolError(f"The MCP server {self.name!r} sent a result that could not be used.") from None
            text = render_result(result)
            if result.is_error:
                outcome = "tool_error"
                raise ToolError(text or f"The tool {name} reported an error.")
            return text
        except anyio.get_cancelled_exc_class():
            outcome = "cancelled"
            raise
        finally:
            self.metrics.mcp_calls.labels(self.name).inc()
            self.metrics.mcp_latency.labels(self.name).observe(time.perf_counter() - started)
            if outcome != "ok":
                self.metrics.mcp_errors.labels(self.name, outcome).inc()


class McpTools:
    """The MCP servers of MCP_SERVERS for the app's lifetime: `async with McpTools(...).running()`."""

    def __init__(self, settings: Settings, registry: ToolRegistry, metrics: Metrics) -> None:
        self.settings = settings
        self.servers = [McpServer(config, settings, registry, metrics) for config in settings.mcp_servers]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[McpTools]:
        """The servers' loops in one task group; leaving cancels them, which closes their sessions."""
        try:
            async with anyio.create_task_group() as group:
                for server in self.servers:
                    group.start_soon(server.run, name=f"mcp:{server.name}")
                # Start serving with the tools of every server that answers quickly; one that is
                # down (or slow) joins when its loop connects.
                with anyio.move_on_after(self.settings.mcp_connect_timeout):
                    for server in self.servers:
                        await server.attempted.wait()
                try:
                    yield self
                finally:
                    group.cancel_scope.cancel()
        finally:
            for server in self.servers:
                server.registry.remove(server.source)
                server.registry.clear_status(server.source)
                server.metrics.mcp_up.labels(server.name).set(0)
