"""Every dependency a route can ask for, declared once.

Routes name the one service they use; the runtime that built it stays out of their sight.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry

from dreamforge.api.log_context import name_in_logs
from dreamforge.domain.access import Caller, Scope
from dreamforge.domain.fields import MODEL_ID_PATTERN
from dreamforge.events.follow import JobEvents
from dreamforge.models.registry import ModelRegistry
from dreamforge.runtime import Runtime
from dreamforge.services.artifacts import ArtifactService
from dreamforge.services.completion import JobCompletion
from dreamforge.services.dead_letters import DeadLetterQueue
from dreamforge.services.downloads import DownloadService
from dreamforge.services.health import Readiness
from dreamforge.services.jobs import JobService


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


# The dependencies below only pick something off the runtime: they are coroutines so that
# FastAPI calls them on the event loop, where a plain function would cost a hop to its
# thread pool and back on every request.


async def _base_url(request: Request) -> str:
    """Where links point: configured, never taken from what a client sent (the Host header
    is the client's to choose) unless a trusted proxy in front sets it."""
    settings = _runtime(request).settings
    if settings.public_url:
        return settings.public_url.rstrip("/")
    if settings.trust_forwarded_headers:
        return str(request.base_url).rstrip("/")
    return f"http://{settings.host}:{settings.port}"


async def _jobs(request: Request) -> JobService:
    return _runtime(request).job_service


async def _events(request: Request) -> JobEvents:
    return _runtime(request).job_events


async def _artifacts(request: Request) -> ArtifactService:
    return _runtime(request).artifact_service


async def _completion(request: Request) -> JobCompletion:
    runtime = _runtime(request)
    return JobCompletion(runtime.job_service, runtime.job_events, runtime.artifact_service)


async def _downloads(request: Request) -> DownloadService:
    return _runtime(request).download_service


async def _dead_letters(request: Request) -> DeadLetterQueue:
    return _runtime(request).dead_letters


async def _models(request: Request) -> ModelRegistry:
    return _runtime(request).models


async def _readiness(request: Request) -> Readiness:
    return Readiness(_runtime(request).readiness_probes())


async def _metrics(request: Request) -> CollectorRegistry:
    return _runtime(request).metrics


async def _default_model_id(request: Request) -> str:
    return _runtime(request).settings.default_model_id


async def _sse_ping_s(request: Request) -> float:
    return _runtime(request).settings.sse_ping_s


# Not auto_error: a server without keys takes requests without a header.
_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="df_<id>_<secret>",
    description="An API key from `dreamforge key create`; none needed while the server "
    "has no keys (loopback only).",
)


def _caller_with(scope: Scope) -> Callable[..., Awaitable[Caller]]:
    """A dependency: the caller, if its key is valid and has ``scope`` (401, 403)."""

    async def caller(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Caller:
        header = f"Bearer {credentials.credentials}" if credentials else None
        # Cached for seconds: on the event loop, a query only when the cache is cold.
        found = _runtime(request).access.caller(header)
        found.require(scope)
        name_in_logs(request, tenant=found.tenant, job_id=request.path_params.get("job_id"))
        return found

    return caller


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

# The caller of a route, by the scope it needs.
Reader = Annotated[Caller, Depends(_caller_with(Scope.JOBS_READ))]
Writer = Annotated[Caller, Depends(_caller_with(Scope.JOBS_WRITE))]
ModelAdmin = Annotated[Caller, Depends(_caller_with(Scope.MODELS_ADMIN))]
Admin = Annotated[Caller, Depends(_caller_with(Scope.ADMIN))]

BaseUrl = Annotated[str, Depends(_base_url)]
Jobs = Annotated[JobService, Depends(_jobs)]
Events = Annotated[JobEvents, Depends(_events)]
Artifacts = Annotated[ArtifactService, Depends(_artifacts)]
Models = Annotated[ModelRegistry, Depends(_models)]
Downloads = Annotated[DownloadService, Depends(_downloads)]
Completion = Annotated[JobCompletion, Depends(_completion)]
DefaultModelId = Annotated[str, Depends(_default_model_id)]
DeadLetters = Annotated[DeadLetterQueue, Depends(_dead_letters)]
ReadinessChecks = Annotated[Readiness, Depends(_readiness)]
SsePing = Annotated[float, Depends(_sse_ping_s)]
MetricsRegistry = Annotated[CollectorRegistry, Depends(_metrics)]
