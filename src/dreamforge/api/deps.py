"""Every dependency a route can ask for, declared once.

Routes name the one service they use; the runtime that built it stays out of their sight.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from dreamforge.domain.jobs import MODEL_ID_PATTERN
from dreamforge.events.follow import JobEvents
from dreamforge.models.registry import ModelRegistry
from dreamforge.runtime import Runtime
from dreamforge.services.artifacts import ArtifactService
from dreamforge.services.dead_letters import DeadLetterQueue
from dreamforge.services.downloads import DownloadService
from dreamforge.services.health import Readiness
from dreamforge.services.jobs import JobService


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def _base_url(request: Request) -> str:
    """Where links point: configured, never taken from what a client sent (the Host header
    is the client's to choose) unless a trusted proxy in front sets it."""
    settings = _runtime(request).settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if settings.trust_forwarded_headers:
        return str(request.base_url).rstrip("/")
    return f"http://{settings.host}:{settings.port}"


def _jobs(request: Request) -> JobService:
    return _runtime(request).job_service


def _events(request: Request) -> JobEvents:
    return _runtime(request).job_events


def _artifacts(request: Request) -> ArtifactService:
    return _runtime(request).artifact_service


def _downloads(request: Request) -> DownloadService:
    return _runtime(request).download_service


def _dead_letters(request: Request) -> DeadLetterQueue:
    return _runtime(request).dead_letters


def _models(request: Request) -> ModelRegistry:
    return _runtime(request).models


def _readiness(request: Request) -> Readiness:
    return Readiness(_runtime(request).readiness_probes())


def _sse_ping_s(request: Request) -> float:
    return _runtime(request).settings.sse_ping_s


# Identifiers in paths are checked before anything looks them up: a NUL byte or a
# megabyte of text is a bad request, not a database error.
JobId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="A job id the API returned.")
]
DownloadId = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="A download id the API returned.")
]
ModelId = Annotated[str, Path(pattern=MODEL_ID_PATTERN, description="A registered model id.")]
ArtifactKey = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9._/-]{1,512}$", description="From the artifact's signed URL.")
]

BaseUrl = Annotated[str, Depends(_base_url)]
Jobs = Annotated[JobService, Depends(_jobs)]
Events = Annotated[JobEvents, Depends(_events)]
Artifacts = Annotated[ArtifactService, Depends(_artifacts)]
Models = Annotated[ModelRegistry, Depends(_models)]
Downloads = Annotated[DownloadService, Depends(_downloads)]
DeadLetters = Annotated[DeadLetterQueue, Depends(_dead_letters)]
ReadinessChecks = Annotated[Readiness, Depends(_readiness)]
SsePing = Annotated[float, Depends(_sse_ping_s)]
