"""Response bodies, each with an example for the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from dreamforge.domain.errors import ErrorCode
from dreamforge.domain.events import PAYLOADS, EventData
from dreamforge.domain.fields import MODEL_ID_PATTERN
from dreamforge.domain.jobs import JobSpec, JobStatus, ModelDefaults

JOB_ID = "7b0c8a1e-3f52-4d8e-9a37-1f0e2c6b9d41"
_BASE = f"http://127.0.0.1:8000/v1/jobs/{JOB_ID}"
SPEC_EXAMPLE = {
    "prompt": "a lighthouse at dawn, oil on canvas",
    "negative_prompt": "blurry",
    "width": 1024,
    "height": 1024,
    "steps": 30,
    "guidance_scale": 5.0,
    "scheduler": "euler",
    "seed": 1234,
    "model_id": "tiny-sdxl",
}


def _examples(*examples: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(examples)})


# Sequence numbers, Last-Event-ID and ?after= stay within the database's integer column.
MAX_SEQ = 2**31 - 1


class ErrorOut(BaseModel):
    code: ErrorCode
    message: str


class JobLinks(BaseModel):
    self: str
    cancel: str
    progress: str
    stream: str
    logs: str
    artifacts: str


JOB_EXAMPLE: dict[str, Any] = {
    "id": JOB_ID,
    "status": "succeeded",
    "progress": 1.0,
    "stage": "done",
    "spec": SPEC_EXAMPLE,
    "error": None,
    "attempts": 1,
    "created_at": "2026-11-29T08:00:00Z",
    "started_at": "2026-11-29T08:00:00.050000Z",
    "finished_at": "2026-11-29T08:00:09.120000Z",
    "dead_lettered_at": None,
    "links": {
        "self": _BASE,
        "cancel": f"{_BASE}/cancel",
        "progress": f"{_BASE}/progress",
        "stream": f"{_BASE}/progress/stream",
        "logs": f"{_BASE}/logs",
        "artifacts": f"{_BASE}/artifacts",
    },
}


class JobOut(BaseModel):
    model_config = _examples(JOB_EXAMPLE)

    id: str
    status: JobStatus
    progress: float = Field(ge=0, le=1)
    stage: str
    spec: JobSpec
    error: ErrorOut | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    dead_lettered_at: datetime | None = Field(
        None, description="Set while the job is in the dead-letter queue."
    )
    links: JobLinks


class JobListOut(BaseModel):
    model_config = _examples({"data": [JOB_EXAMPLE], "next_cursor": "MjAyNi0xMS0yOVQwODowMDowMA=="})

    data: list[JobOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next page.")


class DeadLettersOut(BaseModel):
    model_config = _examples({"data": [JOB_EXAMPLE]})

    data: list[JobOut] = Field(description="Newest first.")


class PurgedOut(BaseModel):
    model_config = _examples({"purged": 3})

    purged: int = Field(description="Jobs taken out of the dead-letter queue; they stay failed.")


class ProgressOut(BaseModel):
    model_config = _examples(
        {
            "job_id": JOB_ID,
            "status": "running",
            "progress": 0.5250,
            "stage": "denoising",
            "stage_weights": {"loading_model": 0.1, "denoising": 0.85, "saving": 0.05},
            "error": None,
        }
    )

    job_id: str
    status: JobStatus
    progress: float
    stage: str
    stage_weights: dict[str, float]
    error: ErrorOut | None


ARTIFACT_EXAMPLE: dict[str, Any] = {
    "key": f"jobs/{JOB_ID}/00-generate/000.png",
    "content_type": "image/png",
    "size_bytes": 1043211,
    "sha256": "9f2c…",
    "width": 1024,
    "height": 1024,
    "seed": 1234,
    "step_index": 0,
    "step_type": "generate",
    "item_index": 0,
    "url": f"http://127.0.0.1:8000/v1/artifacts/jobs/{JOB_ID}/00-generate/000.png"
    "?expires=1764406800&signature=5d1e…",
    "url_expires_at": "2026-11-29T09:00:00Z",
}


class ArtifactOut(BaseModel):
    model_config = _examples(ARTIFACT_EXAMPLE)

    key: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int
    height: int
    seed: int
    step_index: int
    step_type: str
    item_index: int
    url: str = Field(description="Signed; anyone with it may fetch until url_expires_at.")
    url_expires_at: datetime


class ArtifactListOut(BaseModel):
    model_config = _examples({"data": [ARTIFACT_EXAMPLE]})

    data: list[ArtifactOut]


MODEL_EXAMPLE: dict[str, Any] = {
    "id": "tiny-sdxl",
    "source": "builtin:tiny-sdxl",
    "revision": None,
    "format": "diffusers",
    "base": "sdxl",
    "sha256": "3be4…",
    "size_bytes": 15728640,
    "files": [
        {
            "path": "unet/diffusion_pytorch_model.safetensors",
            "sha256": "9a1c…",
            "size_bytes": 9_437_184,
        }
    ],
    "status": "ready",
    "provenance": {},
    "defaults": {
        "width": 64,
        "height": 64,
        "steps": 4,
        "guidance_scale": 5.0,
        "scheduler": "euler",
    },
    "created_at": "2026-11-29T07:59:00Z",
}


class ModelFileOut(BaseModel):
    path: str
    sha256: str
    size_bytes: int


class ModelOut(BaseModel):
    model_config = _examples(MODEL_EXAMPLE)

    id: str
    source: str
    revision: str | None = Field(description="The source's revision, where it has one.")
    format: str = Field(description="diffusers (a folder) or single_file")
    base: str = Field(description="The architecture: sdxl")
    sha256: str = Field(description="A single file's sha256, or a folder's file manifest's.")
    size_bytes: int
    files: list[ModelFileOut]
    status: str = Field(description="ready, downloading, failed or missing")
    provenance: dict[str, Any] = Field(description="Where it came from, and when.")
    defaults: ModelDefaults
    created_at: datetime


class ModelListOut(BaseModel):
    model_config = _examples({"data": [MODEL_EXAMPLE]})

    data: list[ModelOut]


DOWNLOAD_ID = "5f1d2c3b-8a9e-4f60-b1c2-d3e4f5a6b7c8"
_DOWNLOAD = f"http://127.0.0.1:8000/v1/downloads/{DOWNLOAD_ID}"


class ModelSourceIn(BaseModel):
    """A model to download into the registry, in the background."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"source": "civitai:133005", "id": "juggernaut-xl"}]},
    )

    source: str = Field(
        min_length=1,
        max_length=1024,
        description="hf:ORG/REPO[@REVISION], hf:ORG/REPO/path/file.safetensors, "
        "civitai:VERSION_ID, a civitai.com model URL, an AIR URN, or an https:// URL",
    )
    id: str | None = Field(
        None, pattern=MODEL_ID_PATTERN, description="Registry id; default: from the file name."
    )


class DownloadLinks(BaseModel):
    self: str
    stream: str
    model: str | None = Field(description="The registered model, once there is one.")


DOWNLOAD_EXAMPLE: dict[str, Any] = {
    "id": DOWNLOAD_ID,
    "source": "civitai:133005",
    "model_id": "juggernaut-xl",
    "status": "running",
    "bytes_done": 2_147_483_648,
    "bytes_total": 6_938_041_144,
    "error": None,
    "created_at": "2026-11-29T08:00:00Z",
    "started_at": "2026-11-29T08:00:00.200000Z",
    "finished_at": None,
    "links": {
        "self": _DOWNLOAD,
        "stream": f"{_DOWNLOAD}/stream",
        "model": "http://127.0.0.1:8000/v1/models/juggernaut-xl",
    },
}


class DownloadOut(BaseModel):
    model_config = _examples(DOWNLOAD_EXAMPLE)

    id: str
    source: str
    model_id: str | None
    status: str = Field(description="queued, running, succeeded or failed")
    bytes_done: int
    bytes_total: int | None
    error: str | None = Field(description="Why it failed: expected and actual hashes, a host…")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    links: DownloadLinks


class DownloadListOut(BaseModel):
    model_config = _examples({"data": [DOWNLOAD_EXAMPLE]})

    data: list[DownloadOut] = Field(description="Newest first.")


class HealthOut(BaseModel):
    model_config = _examples({"status": "ok"})

    status: str


class ReadyOut(BaseModel):
    model_config = _examples(
        {"status": "ready", "checks": {"database": "ok", "queue": "ok", "storage": "ok"}}
    )

    status: str
    checks: dict[str, str]


class FieldProblemOut(BaseModel):
    field: str
    message: str
    fix: str


VALIDATION_PROBLEM_EXAMPLE: dict[str, Any] = {
    "type": "urn:dreamforge:problem:validation-error",
    "title": "The request is not valid",
    "status": 422,
    "detail": "width: Input should be a multiple of 8",
    "instance": "/v1/jobs",
    "code": "VALIDATION_ERROR",
    "errors": [
        {
            "field": "width",
            "message": "Input should be a multiple of 8",
            "fix": "use a multiple of 8, e.g. 1024",
        }
    ],
}


class Problem(BaseModel):
    """RFC 9457 problem details, with a stable ``code`` and, for bad input, ``errors``."""

    model_config = _examples(VALIDATION_PROBLEM_EXAMPLE)

    type: str
    title: str
    status: int
    detail: str
    instance: str
    code: str
    errors: list[FieldProblemOut] | None = None


_PROBLEM_EXAMPLES: dict[int, tuple[str, str, str]] = {
    401: (
        "UNAUTHORIZED",
        "API key missing or not valid",
        "the API key is not valid (unknown, revoked or mistyped)",
    ),
    403: (
        "FORBIDDEN",
        "Signature invalid or expired",
        "the URL's signature is invalid or it "
        "has expired; list the artifacts again for a fresh URL",
    ),
    404: ("NOT_FOUND", "No such resource", f"job '{JOB_ID}' does not exist"),
    429: (
        "QUOTA_EXCEEDED",
        "Over the tenant's quota",
        "3 image(s) would exceed your 100 a day; 2 left today",
    ),
    409: (
        "CONFLICT",
        "State conflict",
        f"job {JOB_ID} already succeeded; there is nothing to cancel",
    ),
    500: (
        "RUNNER_ERROR",
        "The job failed (its own error code)",
        f"job {JOB_ID} failed: the pipeline raised RuntimeError",
    ),
    503: ("UNAVAILABLE", "Unavailable", "the database is unavailable; retry shortly"),
}


def problem_example(status: int) -> tuple[str, dict[str, Any]]:
    if status == 422:
        return "Invalid request: each bad field is named, with a fix", VALIDATION_PROBLEM_EXAMPLE
    code, description, detail = _PROBLEM_EXAMPLES[status]
    return description, {
        "type": f"urn:dreamforge:problem:{code.lower().replace('_', '-')}",
        "title": description,
        "status": status,
        "detail": detail,
        "instance": f"/v1/jobs/{JOB_ID}",
        "code": code,
    }


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem responses a route can give, each with an example."""
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        description, example = problem_example(status)
        responses[status] = {
            "model": Problem,
            "description": description,
            "content": {"application/problem+json": {"example": example}},
        }
    return responses


def access_responses() -> dict[int | str, dict[str, Any]]:
    """The problems of a route that wants an API key: none or a bad one, or one without
    the scope the route needs."""
    _, example = problem_example(401)
    scope = "this API key lacks the 'jobs:write' scope"
    return {
        **problem_responses(401),
        403: {
            "model": Problem,
            "description": "The API key lacks the scope this route needs",
            "content": {
                "application/problem+json": {
                    "example": {**example, "status": 403, "code": "FORBIDDEN", "detail": scope}
                }
            },
        },
    }


def _wire_model(payload: type[EventData]) -> type[BaseModel]:
    """The wire shape of an event: its payload plus ``seq``, ``type`` and ``ts``."""
    fields: dict[str, Any] = {
        "seq": (
            int | None,
            Field(None, description="Per-job sequence number; absent on live progress."),
        ),
        "type": (Literal[payload.TYPE.value], ...),
        "ts": (datetime, ...),
    }
    name = payload.__name__.removesuffix("Data") + "Event"
    model: type[BaseModel] = create_model(name, __base__=payload, **fields)
    model.__doc__ = payload.__doc__
    return model


def event_schemas() -> dict[str, Any]:
    """JSON schemas of every event shape, and ``JobEvent``, their union by ``type``, for
    the OpenAPI document (FastAPI does not describe SSE and NDJSON bodies itself)."""
    models = [_wire_model(p) for p in PAYLOADS.values()]
    union: Any = Annotated[Union[tuple(models)], Field(discriminator="type")]  # noqa: UP007
    schema = TypeAdapter(union).json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = schema.pop("$defs")
    definitions["JobEvent"] = schema
    return definitions


def sse_event_schema(data_schema: str, events: list[str]) -> dict[str, Any]:
    """The schema of one Server-Sent Event whose ``data:`` is JSON of ``data_schema``."""
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"type": "string", "enum": events},
            "id": {"type": "string", "description": "The event's seq, where it has one."},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"$ref": f"#/components/schemas/{data_schema}"},
            },
            "retry": {"type": "integer"},
        },
    }
