"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from dreamforge import __version__
from dreamforge.api import problems
from dreamforge.api.routers import artifacts, health, jobs, logs, models, progress
from dreamforge.runtime import Runtime

DESCRIPTION = """\
Generate images with SDXL models over HTTP.

Create a job with `POST /v1/jobs`, follow it on `links.stream` (Server-Sent Events, resumable
with `Last-Event-ID`), then fetch its images from `links.artifacts`. Every error is an
RFC 9457 problem (`application/problem+json`) with a stable `code`.
"""


def create_app(runtime: Runtime, *, run_worker: bool = False) -> FastAPI:
    """The API over ``runtime``; with ``run_worker`` the app also runs jobs in-process
    (the embedded profile) and owns the runtime's start and stop."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_worker:
            runtime.start_embedded_worker()
        try:
            yield
        finally:
            if run_worker:
                runtime.stop()

    app = FastAPI(
        title="Dream Forge", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.state.runtime = runtime
    problems.install(app)
    for router in (
        health.router,
        jobs.router,
        progress.router,
        logs.router,
        artifacts.router,
        models.router,
    ):
        app.include_router(router)
    return app
