"""The README's run command on a fresh copy of the repo: installs from the lock, mints a first key,
prints a playground link that carries it, and the offline demo agent shows a tool round trip."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings
from testkit.net import free_port
from tests.helpers import sse_events

ROOT = Path(__file__).resolve().parent.parent
README_RUN = "make run"


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=30)
    return [name for name in listed.stdout.decode().split("\0") if name]


@pytest.fixture
def fresh_copy(tmp_path: Path) -> Path:
    """What a clone holds: tracked files only (working-tree versions), no venv, no database."""
    copy = tmp_path / "agentchat"
    for name in tracked_files():
        source = ROOT / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


@pytest.fixture
def first_run(fresh_copy: Path) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    readme = (ROOT / "README.md").read_text()
    assert f"\n{README_RUN}\n" in readme, "the README's run command changed: update this test"
    port = free_port()
    # The machine's environment (certificates, proxies, caches) but none of the service's settings:
    # what a newcomer has before configuring anything.
    ours = {name.upper() for name in Settings.model_fields} | {"TEST_DATABASE_URL", "TEST_REDIS_URL"}
    env = {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("VIRTUAL_ENV")}
    env |= {"PORT": str(port), "LOG_FORMAT": "json"}
    process = subprocess.Popen(
        README_RUN.split(),
        cwd=fresh_copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        yield process, port, lines
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


def children(pid: int) -> list[int]:
    """The direct children of `pid` (here: the uvicorn that `make run` started), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def read_until(process: subprocess.Popen[str], lines: list[str], pattern: str, within: float) -> re.Match[str]:
    assert process.stdout is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"`{README_RUN}` ended (exit {process.poll()}):\n" + "".join(lines[-40:]))
        lines.append(line)
        if found := re.search(pattern, line):
            return found
    raise AssertionError(f"no line matching {pattern!r} within {within}s:\n" + "".join(lines[-40:]))


@pytest.mark.e2e
def test_make_run_on_a_fresh_copy_shows_the_agent_at_work(
    first_run: tuple[subprocess.Popen[str], int, list[str]], fresh_copy: Path
) -> None:
    process, port, lines = first_run
    url = f"http://127.0.0.1:{port}"
    link = read_until(process, lines, rf"{re.escape(url)}/#key=(ak_\S+)", within=600)
    key = link.group(1)
    read_until(process, lines, r"Uvicorn running on|app\.started", within=60)
    printed = len(lines)  # what first-run printed; everything after is the server's log

    with httpx.Client(base_url=url, timeout=30) as http:
        page = http.get("/")  # the link's page: the fragment itself never reaches the server
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        auth = {"Authorization": f"Bearer {key}"}
        assert http.get("/conversations", headers=auth).status_code == 200

        streamed = http.post("/chat", json={"message": "what is 6*7?", "stream": True}, headers=auth)
        assert streamed.status_code == 200, streamed.text
        events = sse_events(streamed.text)
        kinds = [e["event"] for e in events]
        assert events[0]["data"]["model"] == "offline"
        use = next(e["data"] for e in events if e["event"] == "tool_use")
        result = next(e["data"] for e in events if e["event"] == "tool_result")
        assert use["name"] == "calculator"
        assert result["tool_use_id"] == use["id"]
        assert not result["is_error"]
        assert "42" in result["content"]
        answer = "".join(e["data"]["text"] for e in events if e["event"] == "delta")
        assert "42" in answer
        assert kinds.index("tool_use") < kinds.index("tool_result") < kinds.index("end")

    for server in children(process.pid):
        os.kill(server, signal.SIGTERM)
    assert process.wait(30) == 0
    log = "".join(lines[printed:]) + (process.stdout.read() if process.stdout else "")
    assert "chat.turn.finished" in log
    assert key not in log, "the key must not reach any log line"
    # Run again over the same database: a key exists, so nothing more is minted.
    again = subprocess.run(
        [str(fresh_copy / ".venv" / "bin" / "python"), "-m", "app.cli", "first-run", "--url", url],
        cwd=fresh_copy,
        env={k: v for k, v in os.environ.items() if k.upper() not in {"DATABASE_URL", "REDIS_URL"}},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    assert "ak_" not in again.stdout
