"""MCP tools: a real MCP server (tests/agent/mcp_server.py, in a subprocess) reached over streamable HTTP.

The fake model is scripted to call `<server>__<tool>`; everything else is real: the SDK, the
transport, the server, the reconnect loop, the agent loop, the database.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import mcp_types
import pytest

from app.agent.history import INTERRUPTED
from app.agent.mcp import McpArguments, McpTool, model_tool_name, render_result
from app.agent.registry import ToolRegistry
from app.agent.tools.calculator import calculator
from app.core.agents_config import parse_agents
from app.core.config import Settings
from app.core.mcp_config import parse_mcp_servers
from app.main import create_app
from testkit.fake_llm import FakeLLMServer
from tests.agent.mcp_server import PNG, McpServerProcess, free_port
from tests.core.test_config import CLEAN
from tests.fixtures.app import make_key
from tests.helpers import Live, eventually, live_server, sse_events

HEADER = "X-Tracker-Key"
TOKEN = f"tracker-s3cret-{uuid.uuid4().hex}"  # nothing the log's own masking would catch: it must not get there
ROOT = Path(__file__).resolve().parents[2]


def tool(name: str, args: dict[str, Any] | None = None) -> str:
    return f"[[tool:{name} {json.dumps(args or {})}]]"


@pytest.fixture(scope="module")
def tracker() -> Iterator[McpServerProcess]:
    """The shared server: it refuses every MCP request that lacks `X-Tracker-Key: <TOKEN>`."""
    with McpServerProcess(require_header=f"{HEADER}={TOKEN}").running() as server:
        yield server


@pytest.fixture(scope="module")
def legacy_tracker() -> Iterator[McpServerProcess]:
    """A server of the handshake era (before 2026-07-28): sessions, notifications, no listen streams."""
    with McpServerProcess(require_header=f"{HEADER}={TOKEN}", legacy=True).running() as server:
        yield server


@pytest.fixture(params=["modern", "legacy"])
def era_tracker(request: pytest.FixtureRequest) -> McpServerProcess:
    server: McpServerProcess = request.getfixturevalue("tracker" if request.param == "modern" else "legacy_tracker")
    return server


def entry(server: McpServerProcess, name: str = "tracker", **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": server.url, "headers": {HEADER: "${TRACKER_TOKEN}"}, "timeout": 1.0, **extra}


@pytest.fixture
def mcp_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TRACKER_TOKEN", TOKEN)

    def build(*servers: dict[str, Any], **extra: Any) -> Settings:
        # The same parsing MCP_SERVERS gets at start-up, ${TRACKER_TOKEN} included.
        update = {
            "mcp_servers": parse_mcp_servers(list(servers)),
            "mcp_connect_timeout": 5.0,
            "mcp_reconnect_min_seconds": 0.1,
            "mcp_reconnect_max_seconds": 0.4,
            "agent_tool_result_max_chars": 2000,
            **extra,
        }
        return settings.model_copy(update=update)

    return build


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[Live, dict[str, str]]]:
    async with live_server(create_app(settings)) as live:
        yield live, {"Authorization": f"Bearer {await make_key(live.state)}"}


async def chat(live: Live, headers: dict[str, str], message: str, **extra: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
        return await http.post("/chat", json={"message": message, **extra}, headers=headers)


def offered(llm_server: FakeLLMServer) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in llm_server.state.request_bodies()[-1].get("tools", [])}


def calls_of(response: httpx.Response) -> list[tuple[str, bool, str]]:
    assert response.status_code == 200, response.text
    return [(c["name"], c["is_error"], c["result"]) for c in response.json()["message"]["tool_calls"]]


# --------------------------------------------------------------------------- the model uses MCP tools


async def test_a_tool_reaches_the_model_namespaced_with_its_schema(
    tracker: McpServerProcess, mcp_settings: Any, llm_server: FakeLLMServer
) -> None:
    started = time.monotonic()
    async with serving(mcp_settings(entry(tracker))) as (live, auth):
        assert time.monotonic() - started < 2.5  # connected: start-up went on at once, tools in hand
        r = await chat(live, auth, "2+3? " + tool("tracker__add", {"a": 2, "b": 3}))
        assert calls_of(r) == [("tracker__add", False, "5")]
        add = offered(llm_server)["tracker__add"]
        assert add["description"] == "Add two integers."
        assert add["input_schema"]["properties"]["a"]["type"] == "integer"
        assert add["input_schema"]["required"] == ["a", "b"]
        assert {"calculator", "tracker__echo", "tracker__hang"} <= set(offered(llm_server))
        # The history shows the call like a built-in's, and replays cleanly.
        cid = r.json()["conversation_id"]
        async with httpx.AsyncClient(base_url=live.url) as http:
            items = (await http.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
        assert [(c["name"], c["input"], c["result"]) for c in items[1]["tool_calls"]] == [
            ("tracker__add", {"a": 2, "b": 3}, "5")
        ]
        assert (await chat(live, auth, "thanks", conversation_id=cid)).status_code == 200
    assert llm_server.state.rejections == []


async def test_several_calls_in_one_turn_run_concurrently_and_stream(
    tracker: McpServerProcess, mcp_settings: Any
) -> None:
    group = uuid.uuid4().hex[:8]
    message = (
        tool("tracker__meet", {"group": group})  # each waits for the other: only concurrency lets both return
        + tool("tracker__meet", {"group": group})
        + tool("tracker__echo", {"text": "hi"})
        + tool("calculator", {"expression": "6*7"})
    )
    async with serving(mcp_settings(entry(tracker))) as (live, auth):
        r = await chat(live, auth, message, stream=True)
    events = sse_events(r.text)
    uses = [e["data"] for e in events if e["event"] == "tool_use"]
    results = {e["data"]["tool_use_id"]: e["data"] for e in events if e["event"] == "tool_result"}
    assert [u["name"] for u in uses] == ["tracker__meet", "tracker__meet", "tracker__echo", "calculator"]
    assert [(results[u["id"]]["content"], results[u["id"]]["is_error"]) for u in uses] == [
        (f"met 2 in {group}", False),
        (f"met 2 in {group}", False),
        ("echo: hi", False),
        ("42", False),
    ]
    assert events[-1]["event"] == "end"


async def test_every_failure_is_an_error_result_the_model_reads(
    tracker: McpServerProcess, mcp_settings: Any, llm_server: FakeLLMServer
) -> None:
    tag = uuid.uuid4().hex[:8]
    message = (
        tool("tracker__fail", {"reason": "disk full"})
        + tool("tracker__hang", {"seconds": 30, "tag": tag})  # past the server's 1 s timeout
        + tool("tracker__huge", {"chars": 50_000})
        + tool("tracker__add", {"a": "two"})
        + tool("tracker__picture")
        + tool("tracker__nope")
    )
    async with serving(mcp_settings(entry(tracker))) as (live, auth):
        started = time.monotonic()
        r = await chat(live, auth, message)
        assert time.monotonic() - started < 5
        async with httpx.AsyncClient(base_url=live.url) as http:
            metrics = (await http.get("/metrics")).text
    fail, hang, huge, bad, picture, nope = calls_of(r)
    assert fail == ("tracker__fail", True, "Error executing tool fail: failed on purpose: disk full")
    assert hang == ("tracker__hang", True, "The tool tracker__hang timed out after 1 seconds.")
    assert huge[:2] == ("tracker__huge", False)
    assert huge[2] == "y" * 2000 + "\n…[truncated 48000 characters]"
    assert bad[:2] == ("tracker__add", True)
    assert bad[2].startswith("Invalid input for tracker__add: ")
    assert "a: 'two' is not of type 'integer'" in bad[2]
    assert "'b' is a required property" in bad[2]
    assert picture == ("tracker__picture", False, f"here it is\n[image: image/png, {len(PNG)} bytes]")
    assert nope[1] is True
    assert nope[2].startswith("There is no tool named 'tracker__nope'")
    # The model was sent the same results, as tool results.
    sent = llm_server.state.request_bodies()[-1]["messages"][-1]["content"]
    assert [b["type"] for b in sent] == ["tool_result"] * 6
    assert [b["is_error"] for b in sent] == [True, True, False, True, False, True]
    # The time-out cancelled the call on the server too.
    await eventually(lambda: _has(tracker, "cancelled", tag), timeout=3)
    assert tag not in (await tracker.state())["finished"]
    assert 'agentchat_mcp_calls_total{server="tracker"} 5.0' in metrics
    for kind in ("tool_error", "timeout", "invalid_input"):
        assert f'agentchat_mcp_errors_total{{server="tracker",type="{kind}"}} 1.0' in metrics
    assert 'agentchat_mcp_call_duration_seconds_count{server="tracker"} 5.0' in metrics
    assert 'agentchat_mcp_server_up{server="tracker"} 1.0' in metrics


async def _has(server: McpServerProcess, key: str, tag: str) -> bool:
    return tag in (await server.state())[key]


async def test_the_allow_list_hides_a_tool(
    tracker: McpServerProcess, mcp_settings: Any, llm_server: FakeLLMServer
) -> None:
    async with serving(mcp_settings(entry(tracker, tools=["echo", "add"]))) as (live, auth):
        before = (await tracker.state())["calls"].count("secret")
        r = await chat(live, auth, tool("tracker__secret"))
        ((name, is_error, result),) = calls_of(r)
        assert is_error
        assert result.startswith("There is no tool named 'tracker__secret'")
        assert {n for n in offered(llm_server) if n.startswith("tracker__")} == {"tracker__echo", "tracker__add"}
        assert (await tracker.state())["calls"].count("secret") == before


async def test_leaving_during_an_mcp_call_cancels_it_on_the_server(
    era_tracker: McpServerProcess, mcp_settings: Any, llm_server: FakeLLMServer
) -> None:
    # 2026-07-28: the request's stream is closed; before: a notifications/cancelled. Either way the server stops.
    tracker, tag = era_tracker, uuid.uuid4().hex[:8]
    async with serving(mcp_settings(entry(tracker, timeout=30))) as (live, auth):
        async with httpx.AsyncClient(base_url=live.url, timeout=30) as http:
            cid = (await http.post("/chat", json={"message": "hello"}, headers=auth)).json()["conversation_id"]
            body = {
                "message": tool("tracker__hang", {"seconds": 30, "tag": tag}),
                "conversation_id": cid,
                "stream": True,
            }
            async with http.stream("POST", "/chat", headers=auth, json=body) as r:
                seen = ""
                async for chunk in r.aiter_text():
                    seen += chunk
                    if "event: tool_use" in seen:
                        break
                await eventually(lambda: _has(tracker, "started", tag), timeout=3)
            # The client left while the server was running the call: the server sees it cancelled.
            await eventually(lambda: _has(tracker, "cancelled", tag), timeout=3)

            async def settled() -> bool:
                items = (await http.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
                return bool(items[-1]["status"] == "incomplete")

            await eventually(settled, timeout=3)
            items = (await http.get(f"/conversations/{cid}/messages", headers=auth)).json()["items"]
            assert [(c["name"], c["is_error"], c["result"]) for c in items[-1]["tool_calls"]] == [
                ("tracker__hang", True, INTERRUPTED)
            ]
            nxt = await http.post("/chat", json={"message": "still there?", "conversation_id": cid}, headers=auth)
            assert nxt.status_code == 200, nxt.text
            assert nxt.json()["message"]["status"] == "complete"
    assert tag not in (await tracker.state())["finished"]
    assert llm_server.state.rejections == []


async def test_the_tool_list_follows_the_server_at_run_time(
    era_tracker: McpServerProcess, mcp_settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # 2026-07-28: a subscriptions/listen stream; before: the tools/list_changed notification.
    tracker, extra = era_tracker, f"extra_{uuid.uuid4().hex[:6]}"
    # No periodic re-listing within the test: only the server's change event can bring the tool.
    async with serving(mcp_settings(entry(tracker), mcp_ping_seconds=600)) as (live, auth):
        registry = live.state.tools
        assert f"tracker__{extra}" not in registry.names
        try:
            await tracker.add_tool(extra)
            await eventually(lambda: f"tracker__{extra}" in registry.names, timeout=3)
            r = await chat(live, auth, tool(f"tracker__{extra}", {"note": "yo"}))
            assert calls_of(r) == [(f"tracker__{extra}", False, "extra tool says yo")]
        finally:
            await tracker.remove_tool(extra)
        await eventually(lambda: f"tracker__{extra}" not in registry.names, timeout=3)
        assert "tracker__add" in registry.names
    (connected,) = [json.loads(line) for line in capsys.readouterr().err.splitlines() if "mcp.server.connected" in line]
    assert connected["protocol"] == ("2025-11-25" if tracker.legacy else "2026-07-28")


# --------------------------------------------------------------------------- servers that are down


async def test_a_server_down_at_start_up_joins_when_it_comes_up(mcp_settings: Any, llm_server: FakeLLMServer) -> None:
    late = McpServerProcess()
    settings = mcp_settings({"name": "late", "url": late.url})
    started = time.monotonic()
    async with serving(settings) as (live, auth):
        assert time.monotonic() - started < 2.5  # start-up did not wait for it
        try:
            r = await chat(live, auth, "hello")
            assert r.status_code == 200
            assert not any(name.startswith("late__") for name in offered(llm_server))
            async with httpx.AsyncClient(base_url=live.url) as http:
                ready = await http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["mcp:late"] == "down (ConnectError)"

            await late.astart()
            await eventually(lambda: "late__add" in live.state.tools.names, timeout=5)
            assert calls_of(await chat(live, auth, tool("late__add", {"a": 1, "b": 1}))) == [("late__add", False, "2")]
            async with httpx.AsyncClient(base_url=live.url) as http:
                assert (await http.get("/readyz")).json()["checks"]["mcp:late"] == "ok"
        finally:
            await late.akill()


async def test_a_server_killed_mid_call_is_an_error_result_then_reconnects(mcp_settings: Any) -> None:
    flaky = McpServerProcess()
    await flaky.astart()
    try:
        async with serving(mcp_settings({"name": "flaky", "url": flaky.url, "timeout": 20})) as (live, auth):
            tag = uuid.uuid4().hex[:8]
            answer: list[httpx.Response] = []

            async def ask() -> None:
                answer.append(await chat(live, auth, tool("flaky__hang", {"seconds": 30, "tag": tag})))

            async with anyio.create_task_group() as group:
                group.start_soon(ask)
                await eventually(lambda: _has(flaky, "started", tag), timeout=5)
                await flaky.akill()
            ((name, is_error, result),) = calls_of(answer[0])
            assert (name, is_error) == ("flaky__hang", True)
            assert result == "The MCP server 'flaky' dropped the connection during the call."
            await eventually(lambda: "flaky__add" not in live.state.tools.names, timeout=3)

            await flaky.astart()  # the same port: the loop reconnects by itself
            await eventually(lambda: "flaky__add" in live.state.tools.names, timeout=5)
            assert calls_of(await chat(live, auth, tool("flaky__add", {"a": 2, "b": 2}))) == [
                ("flaky__add", False, "4")
            ]
            async with httpx.AsyncClient(base_url=live.url) as http:
                metrics = (await http.get("/metrics")).text
            assert 'agentchat_mcp_errors_total{server="flaky",type="unavailable"} 1.0' in metrics
    finally:
        await flaky.akill()


# --------------------------------------------------------------------------- headers, readiness, config


async def test_headers_from_the_environment_are_sent_and_never_shown(
    tracker: McpServerProcess,
    mcp_settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong = f"wrong-s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("WRONG_TOKEN", wrong)
    ghost = f"http://127.0.0.1:{free_port()}/mcp"
    settings = mcp_settings(
        entry(tracker),
        {"name": "impostor", "url": tracker.url, "headers": {HEADER: "${WRONG_TOKEN}"}},
        {"name": "ghost", "url": ghost, "headers": {"Authorization": "Bearer ${TRACKER_TOKEN}"}},
        log_level="DEBUG",
    )
    refused_before = (await tracker.state())["refused"]
    async with serving(settings) as (live, auth):
        # The server asserts the header: with it, the tools work; without the right one, none.
        assert calls_of(await chat(live, auth, tool("tracker__echo", {"text": "x"}))) == [
            ("tracker__echo", False, "echo: x")
        ]
        names = live.state.tools.names
        assert "tracker__echo" in names
        assert not any(n.startswith(("impostor__", "ghost__")) for n in names)
        assert (await tracker.state())["refused"] > refused_before
        async with httpx.AsyncClient(base_url=live.url) as http:
            ready = await http.get("/readyz")
            metrics = (await http.get("/metrics")).text
        # Each server's state is shown; none of them fails readiness.
        assert ready.status_code == 200, ready.text
        checks = ready.json()["checks"]
        assert checks["mcp:tracker"] == "ok"
        assert checks["mcp:impostor"].startswith("down (MCPError")
        assert checks["mcp:ghost"] == "down (ConnectError)"
        assert 'agentchat_mcp_server_up{server="ghost"} 0.0' in metrics
    logged = capsys.readouterr().err
    assert "mcp.server.connected" in logged  # the log was captured…
    assert "mcp.server.down" in logged
    for secret in (TOKEN, wrong):  # …and holds no header value, nor do /readyz and /metrics
        assert secret not in logged
        assert secret not in ready.text
        assert secret not in metrics


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        ('[{"name": "tracker", "url": "ftp://x/mcp"}]', "MCP_SERVERS: entry 1 ('tracker'): url: must be an http"),
        (
            '[{"name": "ok", "url": "http://a/mcp"}, {"name": "two", "url": "http://b/mcp", "timeout": -1}]',
            "MCP_SERVERS: entry 2 ('two'): timeout: ",
        ),
        (
            '[{"name": "t", "url": "http://a/mcp", "headers": {"X-A": "top-s3cret", "X-B": "${NOT_SET_ANYWHERE}"}}]',
            "MCP_SERVERS: entry 1 ('t'): headers: header 'X-B' references ${NOT_SET_ANYWHERE}, which is not set",
        ),
        ('[{"name": "t", "url": "http://a/mcp"', "MCP_SERVERS: is not valid JSON"),
    ],
    ids=["url", "timeout", "env", "json"],
)
def test_a_malformed_entry_stops_start_up_with_one_line(servers: str, expected: str) -> None:
    runs = [["-c", "from app.main import create_app; create_app()"]]
    if expected.endswith("http"):
        runs.append(["-m", "uvicorn", "app.main:app", "--port", "0"])
    for args in runs:
        result = subprocess.run(
            [sys.executable, *args],
            env={**CLEAN, "MCP_SERVERS": servers},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("agentchat: configuration error: " + expected), lines[0]
        assert "top-s3cret" not in result.stderr


def test_a_yaml_file_configures_the_servers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKER_TOKEN", "abc")
    path = tmp_path / "mcp.yaml"
    path.write_text(
        "servers:\n"
        "  - name: tracker\n"
        "    url: https://tracker.example/mcp\n"
        "    headers: {Authorization: 'Bearer ${TRACKER_TOKEN}'}\n"
        "    tools: [search, create_issue]\n"
        "    timeout: 5\n"
    )
    (server,) = Settings(mcp_servers=str(path)).mcp_servers
    assert (server.name, server.url, server.tools, server.timeout) == (
        "tracker",
        "https://tracker.example/mcp",
        ("search", "create_issue"),
        5,
    )
    assert server.headers["Authorization"].get_secret_value() == "Bearer abc"
    assert "abc" not in repr(server)


# --------------------------------------------------------------------------- names and results


def test_names_fit_the_messages_api_and_stay_distinct() -> None:
    assert model_tool_name("tracker", "create_issue") == "tracker__create_issue"
    dotted, underscored = model_tool_name("srv", "issues.create"), model_tool_name("srv", "issues_create")
    assert dotted != underscored
    assert dotted.startswith("srv__issues_create_")
    long_a, long_b = model_tool_name("srv", "a" * 100), model_tool_name("srv", "a" * 99 + "b")
    assert long_a != long_b
    for name in (dotted, long_a, long_b, model_tool_name("s", "ünïcode tool!")):
        assert 1 <= len(name) <= 64
        assert all(c.isascii() and (c.isalnum() or c in "_-") for c in name)


def test_non_text_results_become_short_placeholders() -> None:
    result = mcp_types.CallToolResult(
        content=[
            mcp_types.TextContent(type="text", text="see:"),
            mcp_types.AudioContent(type="audio", data="AAAA", mime_type="audio/wav"),
            mcp_types.ResourceLink(type="resource_link", uri="file:///r.txt", name="r"),
            mcp_types.EmbeddedResource(
                type="resource",
                resource=mcp_types.TextResourceContents(uri="mem://x", mime_type="text/plain", text="z" * 10_000),
            ),
        ]
    )
    assert render_result(result) == (
        "see:\n[audio: audio/wav, 3 bytes]\n[resource link: file:///r.txt]\n"
        "[resource: mem://x, text/plain, 10000 characters]"
    )
    structured = mcp_types.CallToolResult(content=[], structured_content={"n": 1})
    assert render_result(structured) == '{"n": 1}'


def test_the_registry_swaps_a_sources_tools_and_keeps_the_static_ones() -> None:
    async def run(_: McpArguments, __: Any) -> str:
        return ""

    def mcp_tool(name: str) -> McpTool:
        return McpTool(name, "d", McpArguments, run, input_schema={"type": "object", "properties": {}})

    registry = ToolRegistry([calculator])
    static_schema = registry.schemas()[0]
    assert registry.replace("mcp:a", [mcp_tool("a__x"), mcp_tool("a__y")]) == []
    turn_schemas = registry.schemas()
    # Taken names are refused: a static tool's, or another source's.
    assert registry.replace("mcp:b", [mcp_tool("b__x"), mcp_tool("a__x"), mcp_tool("calculator")]) == [
        "a__x",
        "calculator",
    ]
    assert registry.names == ["calculator", "a__x", "a__y", "b__x"]
    assert registry.get("calculator") is calculator
    assert registry.replace("mcp:a", [mcp_tool("a__z")]) == []  # a source's tools are replaced as a whole
    assert registry.names == ["calculator", "a__z", "b__x"]
    registry.remove("mcp:b")
    assert [s["name"] for s in registry.schemas()] == ["calculator", "a__z"]
    assert registry.get("b__x") is None
    assert registry.schemas()[0] is static_schema  # built once
    assert [s["name"] for s in turn_schemas] == ["calculator", "a__x", "a__y"]  # a turn's list never changes


# --------------------------------------------------------------------------- agents pick MCP tools by pattern


async def test_an_agents_pattern_selects_only_the_matching_servers_tools(
    tracker: McpServerProcess, mcp_settings: Any, llm_server: FakeLLMServer
) -> None:
    other = McpServerProcess(require_header=f"{HEADER}={TOKEN}")
    with other.running():
        agents = {
            "agents": [{"name": "support", "provider": "anthropic", "model": "claude-test", "tools": ["tracker__*"]}]
        }
        configured = mcp_settings(entry(tracker), entry(other, name="mail"), agents=parse_agents(agents))
        async with serving(configured) as (live, auth):
            r = await chat(live, auth, "hi")
            assert r.status_code == 200, r.text
            names = set(offered(llm_server))
            assert names
            assert all(name.startswith("tracker__") for name in names), names
            # The other server is connected, its tools on offer to no agent that does not name them.
            forged = await chat(live, auth, "send " + tool("mail__echo", {"text": "x"}))
            [(name, is_error, result)] = calls_of(forged)
            assert (name, is_error) == ("mail__echo", True)
            assert "no tool named" in result
