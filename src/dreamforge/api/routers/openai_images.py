"""The OpenAI Images API (``POST /v1/images/generations``), so that tools written for it
work against Dream Forge by changing their base URL. A request becomes an ordinary job
(listed, with receipts) that the call waits for; errors come in OpenAI's shape."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dreamforge.api.deps import BaseUrl, Completion, Writer
from dreamforge.api.log_context import name_in_logs
from dreamforge.api.problems import validation_problems
from dreamforge.domain.errors import ErrorCode, FieldProblem, InvalidRequest
from dreamforge.domain.jobs import MAX_COUNT, JobRequest

router = APIRouter(prefix="/v1/images", tags=["openai-compatible"])

PREFIX = "/v1/images/"

# Model names OpenAI clients send by default; they mean the server's default model.
OPENAI_MODELS = frozenset({"dall-e-2", "dall-e-3", "gpt-image-1"})

# Our request fields, by the names an OpenAI client knows them by.
_PARAMS = {"width": "size", "height": "size", "count": "n", "model_id": "model"}


class ImageRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "a lighthouse at dawn",
                    "n": 2,
                    "size": "1024x1024",
                    "model": "tiny-sdxl",
                }
            ]
        },
    )

    prompt: str = Field(min_length=1, max_length=4000)
    model: str | None = Field(
        None,
        description="A registered model id; dall-e-2, dall-e-3 and gpt-image-1 (and none) "
        "mean the server's default model.",
    )
    n: int = Field(1, ge=1, le=MAX_COUNT, description="How many images.")
    size: str | None = Field(
        None,
        pattern=r"^(auto|\d{2,5}x\d{2,5})$",
        description="WIDTHxHEIGHT, multiples of 8; auto (or none): the model's.",
    )
    response_format: Literal["url", "b64_json"] = "url"
    user: str | None = Field(None, max_length=256, description="Your end user; logged.")
    quality: str | None = Field(None, description="Accepted and ignored.")
    style: str | None = Field(None, description="Accepted and ignored.")


class ImageOut(BaseModel):
    url: str | None = None
    b64_json: str | None = None
    revised_prompt: str | None = None


class ImagesOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "created": 1796004000,
                    "data": [
                        {
                            "url": "http://127.0.0.1:8000/v1/artifacts/jobs/7b0c…/00-generate/"
                            "000.png?expires=1796007600&signature=5d1e…"
                        }
                    ],
                }
            ]
        }
    )

    created: int = Field(description="Unix seconds.")
    data: list[ImageOut]


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str


class OpenAIErrorOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "message": "size: Input should be a multiple of 8 (use a multiple of "
                        "8, e.g. 1024)",
                        "type": "invalid_request_error",
                        "param": "size",
                        "code": "validation_error",
                    }
                }
            ]
        }
    )

    error: OpenAIError


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorOut, "description": description}
    for status, description in {
        400: "Invalid request; param names the field",
        401: "API key missing or not valid (code invalid_api_key)",
        403: "The API key lacks the jobs:write scope",
        409: "The job was canceled before it finished",
        429: "Over the tenant's quota",
        500: "The job failed (code: its error code)",
        503: "A service the job needs is unavailable",
    }.items()
}


def error_response(
    status: int,
    code: ErrorCode,
    detail: str,
    instance: str,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """OpenAI's error object; a request it would call invalid is a 400, as there."""
    if status == 422:
        status = 400
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 429:
        kind = "requests"
    param = _PARAMS.get(errors[0].field, errors[0].field) if errors else None
    message = "; ".join(
        f"{_PARAMS.get(e.field, e.field)}: {e.message} ({e.fix})" for e in errors or []
    )
    wire_code = "invalid_api_key" if code is ErrorCode.UNAUTHORIZED else code.value.lower()
    body = {
        "error": {"message": message or detail, "type": kind, "param": param, "code": wire_code}
    }
    return JSONResponse(body, status_code=status, headers=headers)


def _job_request(body: ImageRequest) -> JobRequest:
    """The job an OpenAI request asks for; the job service checks the rest (the model is
    registered and ready, the size within the server's limits)."""
    fields: dict[str, Any] = {"prompt": body.prompt, "count": body.n}
    if body.model is not None and body.model not in OPENAI_MODELS:
        fields["model_id"] = body.model
    if body.size and body.size != "auto":
        width, height = (int(v) for v in body.size.split("x"))
        fields |= {"width": width, "height": height}
    try:
        return JobRequest(**fields)
    except ValidationError as exc:
        raise InvalidRequest(validation_problems([dict(e) for e in exc.errors()])) from None


@router.post(
    "/generations",
    response_model=ImagesOut,
    response_model_exclude_none=True,
    summary="Create images (OpenAI Images API)",
    responses=_ERRORS,
)
async def generations(
    request: Request,
    response: Response,
    body: Annotated[ImageRequest, Body()],
    completion: Completion,
    base: BaseUrl,
    caller: Writer,
) -> ImagesOut:
    """Renders ``n`` images and answers when they are done, as OpenAI does; the job is
    also in ``GET /v1/jobs`` (its id in the ``X-Dreamforge-Job-Id`` header)."""
    name_in_logs(request, openai_user=body.user)
    finished = await completion.run(_job_request(body), caller.tenant, base)
    name_in_logs(request, job_id=finished.job.id)
    response.headers["X-Dreamforge-Job-Id"] = finished.job.id
    if body.response_format == "b64_json":
        data = [ImageOut(b64_json=base64.b64encode(i.content).decode()) for i in finished.images]
    else:
        data = [ImageOut(url=i.link.url) for i in finished.images]
    return ImagesOut(created=int(finished.job.created_at.timestamp()), data=data)
