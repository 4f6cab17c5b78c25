"""Liveness, readiness and metrics: what probes and Prometheus ask, with no key."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from dreamforge.api.deps import MetricsRegistry, ReadinessChecks
from dreamforge.api.schemas import HealthOut, ReadyOut
from dreamforge.metrics import exposition

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut, summary="The process is alive")
def healthz() -> HealthOut:
    return HealthOut(status="ok")


@router.get(
    "/readyz",
    response_model=ReadyOut,
    summary="Database, queue and storage work",
    responses={
        503: {
            "model": ReadyOut,
            "description": "A dependency is failing",
            "content": {
                "application/json": {
                    "example": {
                        "status": "unavailable",
                        "checks": {
                            "database": "ok",
                            "queue": "ok",
                            "storage": "error: permission denied",
                        },
                    }
                }
            },
        }
    },
)
def readyz(readiness: ReadinessChecks) -> JSONResponse:
    checks = readiness.check()
    ready = all(v == "ok" for v in checks.values())
    body = ReadyOut(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text format (see docs/operations.md)",
            "content": {
                "text/plain": {
                    "schema": {"type": "string"},
                    "example": 'dreamforge_jobs_finished_total{code="",status="succeeded"} 42.0\n',
                }
            },
        }
    },
)
def metrics(registry: MetricsRegistry) -> Response:
    body, content_type = exposition(registry)
    return Response(body, media_type=content_type)
