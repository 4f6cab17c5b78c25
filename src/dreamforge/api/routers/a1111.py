"""The part of AUTOMATIC1111's API that most clients use: ``txt2img``, the model and sampler
lists and the current model, so that a client written for A1111 works unchanged. A
``txt2img`` becomes an ordinary job (listed, with receipts) that the call waits for."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dreamforge import __version__
from dreamforge.api.deps import BaseUrl, Completion, DefaultModelId, Models, Reader, Writer
from dreamforge.api.log_context import name_in_logs
from dreamforge.api.problems import validation_problems
from dreamforge.api.schemas import access_responses, problem_responses
from dreamforge.artifacts.receipts import A1111_CHUNK, read_png_text, read_receipt
from dreamforge.domain.errors import FieldProblem, InvalidRequest
from dreamforge.domain.jobs import SAMPLER_NAMES, JobRequest
from dreamforge.domain.records import Model

router = APIRouter(prefix="/sdapi/v1", tags=["a1111-compatible"], responses=access_responses())

SCHEDULERS = {name: scheduler for scheduler, name in SAMPLER_NAMES.items()}

# Fields that change the image in A1111; sent with these values they are not honoured
# here, so the request is refused rather than answered with something else.
UNSUPPORTED: dict[str, str] = {
    "enable_hr": "hires fix is not available yet; leave enable_hr false",
    "restore_faces": "face restoration is not available; leave restore_faces false",
    "tiling": "tiling is not available; leave tiling false",
    "subseed_strength": "variation seeds are not available; leave subseed_strength 0",
}


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img body. Fields it has that do not change the image here (styles,
    save options, scripts…) are accepted and ignored; those that would are refused."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"prompt": "puppy dog", "steps": 5},
                {
                    "prompt": "maltese puppy",
                    "negative_prompt": "blurry",
                    "steps": 20,
                    "cfg_scale": 7,
                    "sampler_name": "Euler a",
                    "width": 1024,
                    "height": 1024,
                    "seed": -1,
                    "batch_size": 2,
                    "n_iter": 1,
                    "override_settings": {"sd_model_checkpoint": "tiny-sdxl"},
                },
            ]
        },
    )

    prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    cfg_scale: float | None = None
    sampler_name: str | None = None
    sampler_index: str | None = Field(None, description="The older name of sampler_name.")
    width: int | None = None
    height: int | None = None
    seed: int = Field(-1, description="-1: a random seed.")
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    override_settings: dict[str, Any] = Field(
        {}, description="sd_model_checkpoint picks the model (a title or an id)."
    )


class Txt2ImgOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "images": ["iVBORw0KGgoAAAANSUhEUgAA…"],
                    "parameters": {"prompt": "puppy dog", "steps": 5},
                    "info": '{"prompt": "puppy dog", "seed": 1234, "all_seeds": [1234], '
                    '"steps": 5, "sampler_name": "Euler", "sd_model_hash": "3be4a1c2d0", …}',
                }
            ]
        }
    )

    images: list[str] = Field(description="PNG images, base64, parameters and receipt inside.")
    parameters: dict[str, Any]
    info: str = Field(description="A JSON string, as A1111 gives it.")


class SdModelOut(BaseModel):
    title: str
    model_name: str
    hash: str
    sha256: str
    filename: str
    config: str | None = None


class SamplerOut(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str] = {}


def title(model: Model) -> str:
    return f"{model.id} [{model.sha256[:10]}]"


def _model_id(checkpoint: str) -> str:
    """A1111 names a checkpoint by its title, ``name [hash]``; the name is our id."""
    return checkpoint.split(" [", 1)[0].strip()


def _job_request(body: Txt2ImgRequest) -> JobRequest:
    given = body.model_dump(exclude_unset=True)
    problems = [
        FieldProblem(name, f"{given[name]!r} is not supported here", fix)
        for name, fix in UNSUPPORTED.items()
        if given.get(name)  # sent, and not false or 0
    ]
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "negative_prompt": body.negative_prompt,
        "count": body.batch_size * body.n_iter,
    }
    for ours, theirs in (("steps", "steps"), ("guidance_scale", "cfg_scale")):
        if given.get(theirs) is not None:
            fields[ours] = given[theirs]
    for side in ("width", "height"):
        if given.get(side) is not None:
            fields[side] = given[side]
    if body.seed != -1:
        fields["seed"] = body.seed
    if (given.get("scheduler") or "Automatic").lower() != "automatic":
        problems.append(
            FieldProblem(
                "scheduler",
                f"noise schedule {given['scheduler']!r} is not available",
                "leave scheduler out or 'Automatic'",
            )
        )
    sampler = body.sampler_name or body.sampler_index
    if sampler is not None:
        if sampler not in SCHEDULERS:
            problems.append(
                FieldProblem(
                    "sampler_name",
                    f"no sampler {sampler!r} here",
                    f"use one of: {', '.join(SCHEDULERS)} (GET /sdapi/v1/samplers)",
                )
            )
        else:
            fields["scheduler"] = SCHEDULERS[sampler]
    checkpoint = body.override_settings.get("sd_model_checkpoint")
    if isinstance(checkpoint, str) and checkpoint:
        fields["model_id"] = _model_id(checkpoint)
    if problems:
        raise InvalidRequest(problems)
    try:
        return JobRequest(**fields)
    except ValidationError as exc:
        raise InvalidRequest(validation_problems([dict(e) for e in exc.errors()])) from None


# Our fields, by the names an A1111 client sent them as.
_THEIRS = {
    "count": "batch_size",
    "guidance_scale": "cfg_scale",
    "model_id": "override_settings.sd_model_checkpoint",
}


def _in_their_terms(exc: InvalidRequest) -> InvalidRequest:
    return InvalidRequest(
        [FieldProblem(_THEIRS.get(p.field, p.field), p.message, p.fix) for p in exc.errors],
        exc.code,
    )


@router.post(
    "/txt2img",
    response_model=Txt2ImgOut,
    summary="Text to image (AUTOMATIC1111 API)",
    responses=problem_responses(409, 422, 429, 500, 503),
)
async def txt2img(
    request: Request,
    response: Response,
    body: Annotated[Txt2ImgRequest, Body()],
    completion: Completion,
    base: BaseUrl,
    caller: Writer,
) -> Txt2ImgOut:
    """Renders ``batch_size × n_iter`` images and answers with them when done."""
    try:
        finished = await completion.run(_job_request(body), caller.tenant, base)
    except InvalidRequest as exc:
        raise _in_their_terms(exc) from None
    job = finished.job
    name_in_logs(request, job_id=job.id)
    response.headers["X-Dreamforge-Job-Id"] = job.id
    receipts = [read_receipt(image.content) for image in finished.images]
    spec = job.spec
    seeds = [r.seed for r in receipts]
    info = {
        "prompt": spec.prompt,
        "all_prompts": [spec.prompt] * len(seeds),
        "negative_prompt": spec.negative_prompt,
        "all_negative_prompts": [spec.negative_prompt] * len(seeds),
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * len(seeds),
        "subseed_strength": 0,
        "width": spec.width,
        "height": spec.height,
        "sampler_name": SAMPLER_NAMES[spec.scheduler],
        "cfg_scale": spec.guidance_scale,
        "steps": spec.steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "sd_model_name": spec.model_id,
        "sd_model_hash": receipts[0].model.sha256[:10],
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [read_png_text(image.content)[A1111_CHUNK] for image in finished.images],
        "styles": [],
        "job_timestamp": job.created_at.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": f"dreamforge {__version__}",
        "job_id": job.id,
    }
    return Txt2ImgOut(
        images=[base64.b64encode(image.content).decode() for image in finished.images],
        parameters=body.model_dump(),
        info=json.dumps(info),
    )


def _example(value: Any) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": value}}}}


@router.get(
    "/sd-models",
    response_model=list[SdModelOut],
    summary="Models (AUTOMATIC1111 API)",
    responses=_example(
        [
            {
                "title": "tiny-sdxl [3be4a1c2d0]",
                "model_name": "tiny-sdxl",
                "hash": "3be4a1c2d0",
                "sha256": "3be4a1c2d0…",
                "filename": "/srv/dreamforge/models/tiny-sdxl",
                "config": None,
            }
        ]
    ),
)
def sd_models(models: Models, _caller: Reader) -> list[SdModelOut]:
    return [
        SdModelOut(
            title=title(m), model_name=m.id, hash=m.sha256[:10], sha256=m.sha256, filename=m.path
        )
        for m in models.list()
        if m.status == "ready"
    ]


@router.get(
    "/samplers",
    response_model=list[SamplerOut],
    summary="Samplers (AUTOMATIC1111 API)",
    responses=_example([{"name": "Euler a", "aliases": ["euler_a"], "options": {}}]),
)
def samplers(_caller: Reader) -> list[SamplerOut]:
    return [SamplerOut(name=name, aliases=[s.value]) for s, name in SAMPLER_NAMES.items()]


@router.get(
    "/options",
    summary="Settings (AUTOMATIC1111 API): the current model",
    responses=_example({"sd_model_checkpoint": "tiny-sdxl [3be4a1c2d0]"}),
)
def options(models: Models, default_model: DefaultModelId, _caller: Reader) -> dict[str, Any]:
    model = models.get(default_model)
    return {"sd_model_checkpoint": title(model) if model else default_model}
