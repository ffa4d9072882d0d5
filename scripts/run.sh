#!/usr/bin/env bash
# Set up and run the service on http://127.0.0.1:8000 with the embedded default
# (SQLite, in-process stand-ins for Redis, the offline model unless ANTHROPIC_API_KEY is set).
set -euo pipefail
source "$(dirname "$0")/venv.sh"
alembic upgrade head
cat <<MSG

  agentchat is starting on http://127.0.0.1:${PORT:-8000}
  Create an API key in another terminal:
      .venv/bin/python -m app.cli create-key --name me
  then:
      curl -s http://127.0.0.1:${PORT:-8000}/chat -H "Authorization: Bearer <key>" \\
           -H 'content-type: application/json' -d '{"message": "Hello!"}'

MSG
exec uvicorn app.main:app --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --timeout-graceful-shutdown 25
