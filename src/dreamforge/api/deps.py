"""Every dependency a route can ask for, declared once.

Routes name the one service they use; the runtime that built it stays out of their sight.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from dreamforge.events.follow import JobEvents
from dreamforge.models.registry import ModelRegistry
from dreamforge.runtime import Runtime
from dreamforge.services.artifacts import ArtifactService
from dreamforge.services.health import Readiness
from dreamforge.services.jobs import JobService


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _base_url(request: Request) -> str:
    configured = _runtime(request).settings.public_url
    return (configured or str(request.base_url)).rstrip("/")


def _jobs(request: Request) -> JobService:
    return _runtime(request).job_service


def _events(request: Request) -> JobEvents:
    return _runtime(request).job_events


def _artifacts(request: Request) -> ArtifactService:
    return _runtime(request).artifact_service


def _models(request: Request) -> ModelRegistry:
    return _runtime(request).models


def _readiness(request: Request) -> Readiness:
    return Readiness(_runtime(request).readiness_probes())


def _sse_ping_s(request: Request) -> float:
    return _runtime(request).settings.sse_ping_s


BaseUrl = Annotated[str, Depends(_base_url)]
Jobs = Annotated[JobService, Depends(_jobs)]
Events = Annotated[JobEvents, Depends(_events)]
Artifacts = Annotated[ArtifactService, Depends(_artifacts)]
Models = Annotated[ModelRegistry, Depends(_models)]
ReadinessChecks = Annotated[Readiness, Depends(_readiness)]
SsePing = Annotated[float, Depends(_sse_ping_s)]
