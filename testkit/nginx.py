"""nginx for tests: the project's template rendered into a writable prefix, run as this user."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
NGINX_DIR = ROOT / "deploy" / "nginx"


LOOPBACK_EXEMPT = "127.0.0.0/8 1;"


def nginx_binary() -> str:
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        pytest.fail("nginx is not installed: run scripts/ensure-apt.sh nginx nginx", pytrace=False)
    return found


def load_render() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agentchat_nginx_render", NGINX_DIR / "render.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


@dataclass
class Prefix:
    """A writable nginx prefix: the rendered config, pid, logs and temp files, all in one dir."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def error_log(self) -> Path:
        return self.root / "logs" / "error.log"

    @property
    def access_log(self) -> Path:
        return self.root / "logs" / "access.log"

    def values(
        self, listen: str, upstreams: str, resolver: str = "", limit_exempt: str = LOOPBACK_EXEMPT
    ) -> dict[str, str]:
        """Loopback clients are not rate-limited unless `limit_exempt` says otherwise (tests and
        benchmarks send hundreds of requests a second from 127.0.0.1)."""
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        (self.root / "temp").mkdir(exist_ok=True)
        return {
            "LISTEN": listen,
            "UPSTREAMS": upstreams,
            "RESOLVER": resolver,
            "PID_FILE": str(self.root / "nginx.pid"),
            "ERROR_LOG": str(self.error_log),
            "ACCESS_LOG": str(self.access_log),
            "TEMP_DIR": str(self.root / "temp"),
            "LIMIT_EXEMPT": limit_exempt,
        }

    def command(self, nginx_bin: str, *extra: str) -> list[str]:
        # -e: nginx opens its compiled-in error log before reading the config; keep that here too.
        return [nginx_bin, "-c", str(self.conf), "-p", str(self.root), "-e", str(self.error_log), *extra]


def start_nginx(prefix: Prefix, listen_port: int, upstream_ports: list[int]) -> subprocess.Popen[bytes]:
    """nginx in the foreground (so the test owns the process), balancing over loopback replicas."""
    render = load_render()
    upstreams = render.upstream_servers([f"127.0.0.1:{p}" for p in upstream_ports])
    prefix.conf.write_text(render.render(prefix.values(f"127.0.0.1:{listen_port}", upstreams)), encoding="utf-8")
    return subprocess.Popen(
        prefix.command(nginx_binary(), "-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
