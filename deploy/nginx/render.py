"""Render deploy/nginx/nginx.conf.template into a complete nginx.conf.

    python deploy/nginx/render.py            # regenerate deploy/nginx/compose.conf
    python deploy/nginx/render.py --check    # exit 1 if compose.conf is stale

Only ``${UPPER_CASE}`` names are placeholders, so nginx's own ``$host`` and ``${request_id}`` are
left alone. Template-only notes (lines starting with ``##``) are dropped. tests/test_deploy.py
imports this file to render configs with loopback upstreams and writable paths in a temp dir.
"""

from __future__ import annotations

import re
import string
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "nginx.conf.template"
COMPOSE_CONF = HERE / "compose.conf"

PLACEHOLDERS = frozenset(
    {"LISTEN", "UPSTREAMS", "RESOLVER", "PID_FILE", "ERROR_LOG", "ACCESS_LOG", "TEMP_DIR", "LIMIT_EXEMPT"}
)

# Indentation of the upstream block's body in the template.
UPSTREAM_INDENT = " " * 8


# string.Template's four groups; only "braced" can match. Compiled with re.VERBOSE on subclassing.
_PLACEHOLDER_PATTERN = r"""
    \$(?:
        (?P<escaped>(?!))
      | (?P<named>(?!))
      | \{(?P<braced>[A-Z][A-Z0-9_]*)\}
      | (?P<invalid>(?!))
    )
"""


class NginxTemplate(string.Template):
    """``${UPPER_CASE}`` only: no ``$name`` form, no ``$$`` escape, case-sensitive."""

    flags = re.RegexFlag(0)  # not string.Template's re.IGNORECASE, which would match ${request_id}
    pattern = _PLACEHOLDER_PATTERN  # type: ignore[assignment]  # a str, as documented


def upstream_servers(servers: Iterable[str]) -> str:
    """The UPSTREAMS value: one ``server ...;`` line per entry (``"127.0.0.1:8001 max_fails=0"``)."""
    lines = [f"server {server};" for server in servers]
    if not lines:
        raise ValueError("an upstream needs at least one server")
    return f"\n{UPSTREAM_INDENT}".join(lines)


# docker-compose.yml's `lb` service (profile "scaled"), official nginx:1.27-alpine image.
# `resolve` (open-source nginx >= 1.27.3) re-resolves the names through Docker's DNS, so replicas
# that are added (`--scale api-replica=N`) or restarted with a new address are picked up without
# a reload, and a name that does not resolve yet does not stop nginx from starting.
COMPOSE_VALUES: Mapping[str, str] = {
    "LISTEN": "8080",
    "UPSTREAMS": upstream_servers(["api:8000 resolve", "api-replica:8000 resolve"]),
    "RESOLVER": "resolver 127.0.0.11 valid=10s ipv6=off;",
    "PID_FILE": "/var/run/nginx.pid",
    "ERROR_LOG": "stderr",
    "ACCESS_LOG": "/dev/stdout",
    "TEMP_DIR": "/var/cache/nginx",
    "LIMIT_EXEMPT": "",  # every client is rate-limited
}


def render(values: Mapping[str, str], template: str | None = None) -> str:
    """The template with every placeholder replaced; exactly PLACEHOLDERS must be given."""
    missing, extra = PLACEHOLDERS - set(values), set(values) - PLACEHOLDERS
    if missing or extra:
        raise ValueError(f"placeholders: missing {sorted(missing)}, unknown {sorted(extra)}")
    text = TEMPLATE.read_text(encoding="utf-8") if template is None else template
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("##"))
    return NginxTemplate(body).substitute(values)


def main(argv: list[str]) -> int:
    rendered = render(COMPOSE_VALUES)
    if argv == ["--check"]:
        if COMPOSE_CONF.read_text(encoding="utf-8") != rendered:
            sys.stderr.write(f"{COMPOSE_CONF} is stale: run python deploy/nginx/render.py\n")
            return 1
        return 0
    if argv:
        sys.stderr.write(__doc__ or "")
        return 2
    COMPOSE_CONF.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
