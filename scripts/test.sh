#!/usr/bin/env bash
# Set up and run the whole test suite: lint, types, migrations, tests against real Postgres and
# Redis (TEST_DATABASE_URL, TEST_REDIS_URL; defaults are the local servers).
set -euo pipefail
source "$(dirname "$0")/venv.sh" dev   # fails when uv.lock and pyproject.toml disagree
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}"
export TEST_REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379/0}"

echo "== lock"; "$UV" lock --check   # uv.lock is what pyproject.toml resolves to
echo "== ruff"; ruff check app tests migrations bench testkit
echo "== ruff format"; ruff format --check app tests migrations bench testkit
echo "== mypy"; mypy
[ "${1:-}" = "--lint-only" ] && exit 0

echo "== services"; python -m tests.fixtures.services   # one clear line if Postgres or Redis is unreachable
echo "== migrations (upgrade head, check) on Postgres and SQLite"; python -m tests.migrations_check
echo "== browser, load balancer, promtool"
"$(dirname "$0")/ensure-apt.sh" chromium chromium   # tests/playground drive Debian's chromium
"$(dirname "$0")/ensure-apt.sh" nginx nginx         # tests run nginx in front of replicas
"$(dirname "$0")/ensure-apt.sh" promtool prometheus # tests check deploy/prometheus/alerts.yml with promtool
echo "== node clients"   # the Vercel AI SDK (tests/openai/test_client_vercel_ai.py): npm ci when its lock moved
lock=tests/clients/node/package-lock.json stamp=tests/clients/node/node_modules/.installed-lock.json
if cmp -s "$lock" "$stamp"; then echo "tests/clients/node: up to date"; else
  (cd tests/clients/node && npm ci --no-audit --no-fund --loglevel=error)
  cp "$lock" "$stamp"; echo "tests/clients/node: installed $(node --version)"
fi
echo "== pytest"
set +e
python -m pytest "$@"
status=$?
set -e
# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
[ "$status" -eq 5 ] && echo "pytest collected no tests" >&2
exit "$status"
