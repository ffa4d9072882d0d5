"""Liveness and readiness. Neither needs a key: load balancers and orchestrators call them."""

from __future__ import annotations

import anyio
from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from starlette.responses import JSONResponse, Response

from app.core.errors import envelope
from app.state import LifecycleDep, MetricsDep, RedisDep, ResourcesDep, SessionsDep

router = APIRouter(tags=["health"])

CHECK_TIMEOUT = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive. Touches nothing else."""
    return {"status": "ok"}


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus metrics for this replica."""
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz", responses={503: {"description": "A dependency is down; the body names it."}})
async def readyz(
    sessions: SessionsDep, redis: RedisDep, lifecycle: LifecycleDep, resources: ResourcesDep
) -> JSONResponse:
    """Ready to serve: not draining, and the database (and Redis, when configured) answer quickly."""
    checks: dict[str, str] = {}
    if lifecycle.draining:
        # First thing on SIGTERM: the load balancer stops sending new work here.
        body = envelope("shutdown", "Not ready: shutting down.")
        return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})
    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            async with sessions() as session:
                await session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # any failure means "not ready"; the reason goes to the body
        checks["database"] = f"failed: {type(exc).__name__}"
    if redis is not None:
        try:
            with anyio.fail_after(CHECK_TIMEOUT):
                await redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"failed: {type(exc).__name__}"
    failed = sorted(name for name, result in checks.items() if result != "ok")
    # Shown, never failing readiness: an MCP server that is down only takes its own tools away.
    checks.update(resources.tools.statuses())
    if failed:
        body = envelope("not_ready", f"Not ready: {', '.join(failed)} unavailable.")
        body["checks"] = checks
        return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})
    return JSONResponse({"status": "ready", "checks": checks})
