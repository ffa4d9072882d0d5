# syntax=docker/dockerfile:1
#
# agentchat — production image.
#
#   docker build -t agentchat .
#   docker run --rm -p 8000:8000 -e DATABASE_URL=... -e REDIS_URL=... agentchat
#   docker run --rm -e DATABASE_URL=... agentchat alembic upgrade head
#   docker run --rm -e DATABASE_URL=... agentchat python -m app.cli create-key --name NAME
#
# Both stages must use the same base image: the venv built in the builder
# points at /usr/local/bin/python3.11, which must exist at the same path in
# the runtime stage.

# ---------------------------------------------------------------- builder ----
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# uv, pinned, installs exactly what uv.lock says (hashes checked) into the venv.
# The same version scripts/uv.sh bootstraps for `make run` and `make test`.
RUN pip install --no-cache-dir uv==0.13.9

WORKDIR /src

# Only what the install needs (README.md is the project's `readme`).
COPY pyproject.toml uv.lock README.md ./
COPY app/ ./app/

# --locked: fail if uv.lock and pyproject.toml disagree; no dev extra; the project itself
# installed (not linked) into /opt/venv, which is all the runtime stage copies.
ENV UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1
RUN python -m venv /opt/venv \
    && uv sync --locked --no-editable --python /usr/local/bin/python3.11

# ---------------------------------------------------------------- runtime ----
FROM python:3.11-slim

LABEL org.opencontainers.image.title="agentchat" \
      org.opencontainers.image.description="FastAPI service for multi-turn conversations with a tool-using LLM agent" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/venv/bin:$PATH" \
    LOG_FORMAT=json

# Fixed, unprivileged uid/gid so volume ownership and Kubernetes
# `runAsNonRoot` policies are predictable. /app itself is owned by that user
# so the default embedded SQLite database (./agentchat.db) can be created;
# the code and migrations copied below stay root-owned and read-only.
RUN groupadd --system --gid 10001 agentchat \
    && useradd --system --uid 10001 --gid agentchat \
        --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin agentchat \
    && install -d -o 10001 -g 10001 -m 0755 /app

WORKDIR /app

COPY --from=builder /opt/venv /opt/venv
# `alembic upgrade head` is run from the working directory.
COPY alembic.ini ./
COPY migrations/ ./migrations/

USER 10001:10001

EXPOSE 8000

# No curl in the slim image: probe the liveness endpoint with the stdlib.
# urlopen raises (non-zero exit) on connection errors and on HTTP >= 400.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Whose X-Forwarded-For/-Proto uvicorn believes (--proxy-headers): only the proxy's. uvicorn reads
# FORWARDED_ALLOW_IPS (addresses or networks, comma-separated); set it to the load balancer's
# address where there is one (docker-compose.yml: the lb; deploy/k8s: the ingress controllers).
# Trusting everyone ("*") would let any client that reaches the port directly choose its address.
ENV FORWARDED_ALLOW_IPS=127.0.0.1

# Exec form: uvicorn is PID 1 and receives SIGTERM directly. The graceful
# shutdown timeout (25s) must exceed the app's SHUTDOWN_GRACE_SECONDS (20s) and
# stay below the orchestrator's stop grace period (compose: 30s).
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", "--timeout-graceful-shutdown", "25"]
