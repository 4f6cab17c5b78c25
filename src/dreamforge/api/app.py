"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from dreamforge import __version__
from dreamforge.api import options, problems
from dreamforge.api.log_context import LogContext
from dreamforge.api.problems import PROBLEM_JSON
from dreamforge.api.routers import (
    a1111,
    admin,
    artifacts,
    downloads,
    health,
    jobs,
    logs,
    models,
    openai_images,
    progress,
)
from dreamforge.api.schemas import event_schemas, problem_example
from dreamforge.config import Settings
from dreamforge.runners.protocol import Runner
from dreamforge.runtime import Runtime

DESCRIPTION = """\
Generate images with SDXL models over HTTP.

Create a job with `POST /v1/jobs`, follow it on `links.stream` (Server-Sent Events, resumable
with `Last-Event-ID`), then fetch its images from `links.artifacts`. Every error is an
RFC 9457 problem (`application/problem+json`) with a stable `code`.
"""


def create_app(
    runtime: Runtime, *, run_worker: bool = False, runner: Runner | None = None
) -> FastAPI:
    """The API over ``runtime``, which it stops on shutdown; with ``run_worker`` it also
    runs jobs in this process (the embedded profile), on ``runner`` if given."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if run_worker:
            runtime.start_embedded_worker(runner)
        try:
            yield
        finally:
            runtime.stop()

    app = FastAPI(
        title="Dream Forge", version=__version__, description=DESCRIPTION, lifespan=lifespan
    )
    app.state.runtime = runtime
    problems.install(app, {openai_images.PREFIX: openai_images.error_response})
    app.add_middleware(LogContext)
    if runtime.settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=runtime.settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After"],
            max_age=600,
        )
    for router in (
        health.router,
        jobs.router,
        progress.router,
        logs.router,
        artifacts.router,
        models.router,
        downloads.router,
        admin.router,
        openai_images.router,
        a1111.router,
    ):
        app.include_router(router)
    _serve_console(app)
    app.openapi = lambda: _openapi_with_problems(app)  # type: ignore[method-assign]
    options.install(app)
    return app


CONSOLE = Path(__file__).parent / "console"


def _serve_console(app: FastAPI) -> None:
    """The web console: static files that use the public API like any other client."""

    @app.get("/", include_in_schema=False)
    def console() -> FileResponse:
        return FileResponse(CONSOLE / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/console", StaticFiles(directory=CONSOLE), name="console")


def _openapi_with_problems(app: FastAPI) -> dict[str, Any]:
    """Errors are problem documents: FastAPI's own 422 body and the ``application/json``
    it lists beside each declared problem response are replaced by the real media type."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    description, example = problem_example(422)
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation["responses"]
            if path.startswith(openai_images.PREFIX):  # OpenAI's errors: a 400, never a 422
                responses.pop("422", None)
            elif "HTTPValidationError" in str(responses.get("422", "")):
                responses["422"] = {
                    "description": description,
                    "content": {PROBLEM_JSON: {"example": example}},
                }
            for response in responses.values():
                content = response.get("content", {})
                if PROBLEM_JSON in content:
                    content.pop("application/json", None)
                    content[PROBLEM_JSON]["schema"] = problem_ref
    schema["components"]["schemas"].update(event_schemas())
    _document_limits(schema, app.state.runtime.settings)
    for unused in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(unused, None)
    app.openapi_schema = schema
    return schema


def _document_limits(schema: dict[str, Any], settings: Settings) -> None:
    """The operator's limits are part of the contract: clients (and generators of test
    data) see the maxima this server enforces, not only the type's."""
    fields = schema["components"]["schemas"]["JobRequest"]["properties"]
    for name, maximum in (
        ("width", settings.max_width),
        ("height", settings.max_height),
        ("steps", settings.max_steps),
    ):
        for variant in fields[name].get("anyOf", [fields[name]]):
            if variant.get("type") == "integer":
                variant["maximum"] = maximum
