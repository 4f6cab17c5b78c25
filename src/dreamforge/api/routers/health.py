"""Liveness and readiness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from dreamforge.api import deps
from dreamforge.api.schemas import HealthOut, ReadyOut
from dreamforge.runtime import Runtime

router = APIRouter(tags=["health"])
Rt = Annotated[Runtime, Depends(deps.runtime)]


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
def readyz(runtime: Rt) -> JSONResponse:
    checks = {name: _check(probe) for name, probe in runtime.readiness_probes().items()}
    ready = all(v == "ok" for v in checks.values())
    body = ReadyOut(status="ready" if ready else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _check(probe: Callable[[], None]) -> str:
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
        return f"error: {exc}"
    return "ok"
