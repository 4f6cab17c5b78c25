"""What a job is: its spec, its states and the moves between them."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from dreamforge.domain.chains import (
    MAX_CHAIN,
    ChainStep,
    RefineStep,
    UpscaleStep,
    check_chain,
    resolve_chain,
)
from dreamforge.domain.errors import FieldProblem
from dreamforge.domain.fields import MODEL_ID_PATTERN, Prompt


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELED}),
    # running -> queued: a stopping worker hands its job back, or the reaper a lost one.
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, *TERMINAL_STATUSES}),
    JobStatus.SUCCEEDED: frozenset(),
    # failed -> queued: an operator sends a job back from the dead-letter queue.
    JobStatus.FAILED: frozenset({JobStatus.QUEUED}),
    JobStatus.CANCELED: frozenset(),
}


class IllegalTransition(ValueError):
    """A move the state machine does not allow; nothing was written."""


class Transition(NamedTuple):
    """A move from one status to another; the store applies it only from ``source``."""

    source: JobStatus
    target: JobStatus


def can_transition(current: JobStatus, target: JobStatus) -> bool:
    return target in ALLOWED_TRANSITIONS[current]


def check_transition(move: Transition) -> None:
    """Raise ``IllegalTransition`` unless the state machine allows ``move``."""
    if not can_transition(move.source, move.target):
        raise IllegalTransition(f"a job cannot go from {move.source} to {move.target}")


CLAIM = Transition(JobStatus.QUEUED, JobStatus.RUNNING)
CANCEL_QUEUED = Transition(JobStatus.QUEUED, JobStatus.CANCELED)
REQUEUE = Transition(JobStatus.RUNNING, JobStatus.QUEUED)
REVIVE = Transition(JobStatus.FAILED, JobStatus.QUEUED)


def finish(status: JobStatus) -> Transition:
    """The move that ends a running job with ``status``."""
    return Transition(JobStatus.RUNNING, status)


class Scheduler(StrEnum):
    """Samplers by the names A1111 users know (see ``SAMPLER_NAMES``)."""

    EULER = "euler"
    EULER_A = "euler_a"
    DPMPP_2M = "dpmpp_2m"
    DDIM = "ddim"
    HEUN = "heun"
    UNIPC = "unipc"


SAMPLER_NAMES: dict[Scheduler, str] = {
    Scheduler.EULER: "Euler",
    Scheduler.EULER_A: "Euler a",
    Scheduler.DPMPP_2M: "DPM++ 2M",
    Scheduler.DDIM: "DDIM",
    Scheduler.HEUN: "Heun",
    Scheduler.UNIPC: "UniPC",
}

MAX_SEED = 2**32 - 1
MAX_COUNT = 100
Dimension = Annotated[int, Field(ge=64, multiple_of=8)]


class JobRequest(BaseModel):
    """What a client asks for. Unset fields take the model's defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt = Field(description="What to draw.", examples=["a lighthouse at dawn, oil"])
    negative_prompt: str = Field("", max_length=4000, description="What to avoid.")
    width: Dimension | None = Field(None, description="Pixels, a multiple of 8.")
    height: Dimension | None = Field(None, description="Pixels, a multiple of 8.")
    steps: int | None = Field(None, ge=1, description="Denoising steps.")
    guidance_scale: float | None = Field(None, ge=0, le=30, description="CFG scale.")
    scheduler: Scheduler | None = Field(None, description="Sampler.")
    seed: int | None = Field(
        None,
        ge=0,
        le=MAX_SEED,
        description="Item i gets seed + i (wrapping past 2^32 - 1); omit it and every item "
        "draws a seed of its own.",
    )
    count: int = Field(1, ge=1, le=MAX_COUNT, description="How many images (items) to make.")
    time_limit_s: float | None = Field(
        None,
        gt=0,
        description="Fail the job with TIMEOUT once it has run this long; default and "
        "maximum are the server's (DREAMFORGE_JOB_TIME_LIMIT_S, _MAX_JOB_TIME_LIMIT_S).",
    )
    webhook_url: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://",
        description="Told when the job ends (succeeded, failed or canceled), signed per "
        "Standard Webhooks; its host must be one the server allows.",
        examples=["https://app.example.com/hooks/dreamforge"],
    )
    model_id: str | None = Field(
        None, pattern=MODEL_ID_PATTERN, description="Default: the server's model."
    )
    share_batch: bool = Field(
        True,
        description="May be denoised in one device batch with other jobs of the same "
        "model, size, steps, sampler and guidance (faster on a GPU; each keeps its own "
        "seeds, events, images and cancel); false renders it on its own.",
    )
    then: list[ChainStep] = Field(
        [],
        max_length=MAX_CHAIN,
        description="Steps after generate, each over every image of the step before: "
        "upscale, refine (see docs/chains.md).",
        examples=[[{"type": "upscale", "scale": 2}, {"type": "refine", "strength": 0.3}]],
    )


class ModelDefaults(BaseModel):
    """The settings a model works best with; they fill what a request leaves out."""

    width: int = 1024
    height: int = 1024
    steps: int = 30
    guidance_scale: float = 5.0
    scheduler: Scheduler = Scheduler.EULER


class JobSpec(BaseModel):
    """A fully resolved job: every value the runner needs, nothing left to chance."""

    model_config = ConfigDict(frozen=True)

    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    scheduler: Scheduler
    seed: int  # the first item's
    model_id: str
    count: int = 1
    item_seeds: tuple[int, ...] = Field((), description="Each item's seed, in item order.")
    time_limit_s: float | None = Field(None, description="Set by the request; else the server's.")
    then: tuple[UpscaleStep | RefineStep, ...] = Field(
        (), description="The chain after generate, refine steps' blanks filled."
    )
    share_batch: bool = True

    @property
    def shareable(self) -> bool:
        """Whether its items may be denoised beside other jobs' (generate only)."""
        return self.share_batch and not self.then

    def batches_with(self, other: JobSpec) -> bool:
        """Whether the two jobs' items can be denoised in one device batch."""
        shape = ("model_id", "width", "height", "steps", "scheduler", "guidance_scale")
        return (
            self.shareable
            and other.shareable
            and all(getattr(self, name) == getattr(other, name) for name in shape)
        )

    def seeds(self) -> tuple[int, ...]:
        """Each item's seed (jobs stored before batches have ``seed`` alone)."""
        return self.item_seeds or tuple(item_seed(self.seed, i) for i in range(self.count))


class Limits(BaseModel):
    """Operator-set bounds that a request is checked against."""

    max_width: int
    max_height: int
    max_steps: int
    max_time_limit_s: float = float("inf")
    max_output_side: int = 4096


def item_seed(seed: int, index: int) -> int:
    return (seed + index) % (MAX_SEED + 1)


def seed_list(seeds: tuple[int, ...]) -> str:
    """Seeds for a log line: all of a few, the first and last of many."""
    if len(seeds) <= 4:
        return ", ".join(map(str, seeds))
    return f"{seeds[0]}, {seeds[1]} … {seeds[-1]}"


def resolve_spec(
    request: JobRequest, model_id: str, defaults: ModelDefaults, draw: Callable[[], int]
) -> JobSpec:
    """Fill what the request left out from the model's defaults, and give every item its
    seed: the request's seed + the item's index, or one drawn for each."""
    steps = request.steps or defaults.steps
    guidance_scale = (
        defaults.guidance_scale if request.guidance_scale is None else request.guidance_scale
    )
    if request.seed is None:
        seeds = tuple(draw() for _ in range(request.count))
    else:
        seeds = tuple(item_seed(request.seed, i) for i in range(request.count))
    return JobSpec(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        width=request.width or defaults.width,
        height=request.height or defaults.height,
        steps=steps,
        guidance_scale=guidance_scale,
        scheduler=request.scheduler or defaults.scheduler,
        seed=seeds[0],
        model_id=model_id,
        count=request.count,
        item_seeds=seeds,
        time_limit_s=request.time_limit_s,
        share_batch=request.share_batch,
        then=resolve_chain(
            request.then,
            request.prompt,
            request.negative_prompt,
            steps,
            guidance_scale,
            model_id,
        ),
    )


def check_limits(spec: JobSpec, limits: Limits) -> list[FieldProblem]:
    """The problems with a resolved spec under the operator's limits; empty when it is fine."""
    problems = []
    if spec.width > limits.max_width:
        problems.append(
            FieldProblem(
                "width",
                f"{spec.width} is above the maximum {limits.max_width}",
                f"use a width of at most {limits.max_width}",
            )
        )
    if spec.height > limits.max_height:
        problems.append(
            FieldProblem(
                "height",
                f"{spec.height} is above the maximum {limits.max_height}",
                f"use a height of at most {limits.max_height}",
            )
        )
    if spec.steps > limits.max_steps:
        problems.append(
            FieldProblem(
                "steps",
                f"{spec.steps} is above the maximum {limits.max_steps}",
                f"use at most {limits.max_steps} steps",
            )
        )
    problems += check_chain(spec.width, spec.height, spec.then, limits.max_output_side)
    for index, step in enumerate(spec.then):
        if not isinstance(step, RefineStep) or step.steps is None:
            continue
        if step.steps > limits.max_steps:
            problems.append(
                FieldProblem(
                    f"then.{index}.steps",
                    f"{step.steps} is above the maximum {limits.max_steps}",
                    f"use at most {limits.max_steps} steps",
                )
            )
        if step.steps * step.strength < 1:
            problems.append(
                FieldProblem(
                    f"then.{index}.strength",
                    f"strength {step.strength:g} of {step.steps} steps is not one whole step",
                    "raise the strength or the steps so that their product is at least 1",
                )
            )
    if spec.time_limit_s is not None and spec.time_limit_s > limits.max_time_limit_s:
        problems.append(
            FieldProblem(
                "time_limit_s",
                f"{spec.time_limit_s:g} s is above the maximum {limits.max_time_limit_s:g} s",
                f"ask for at most {limits.max_time_limit_s:g} seconds, or leave it out",
            )
        )
    return problems
