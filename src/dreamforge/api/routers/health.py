"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from dreamforge.api.deps import ReadinessChecks
from dreamforge.api.schemas import HealthOut, ReadyOut

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
