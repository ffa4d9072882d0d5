#!/usr/bin/env bash
# Set up and run the service on http://127.0.0.1:8000 with the embedded default
# (SQLite, in-process stand-ins for Redis, the offline demo model unless ANTHROPIC_API_KEY is set).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
alembic upgrade head
URL="http://${HOST:-127.0.0.1}:${PORT:-8000}"
# On the embedded database's first run only: a key, printed once, and a playground link that
# carries it in the URL fragment (which browsers never send to a server).
python -m app.cli first-run --url "$URL"
exec uvicorn app.main:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --timeout-graceful-shutdown 25
