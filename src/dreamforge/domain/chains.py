"""Chains: what a job does after generating, step by step, to every item of the step
before (roadmap M7). ``upscale`` makes images bigger, with an upscaler model or by Lanczos
resampling; ``refine`` runs SDXL image-to-image over them (the "hires fix")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from dreamforge.domain.errors import FieldProblem
from dreamforge.domain.fields import MODEL_ID_PATTERN, Prompt

MAX_CHAIN = 4


class UpscaleStep(BaseModel):
    """Every image, ``scale`` times bigger."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["upscale"] = "upscale"
    scale: float = Field(2.0, gt=1, le=8, description="Output size over input size.")
    model_id: str | None = Field(
        None,
        pattern=MODEL_ID_PATTERN,
        description="A registered upscaler (ESRGAN, Real-ESRGAN, SwinIR…); none: Lanczos "
        "resampling, which needs no model.",
    )


class RefineStep(BaseModel):
    """SDXL image-to-image over every image: ``strength`` of 0.3 keeps the composition
    and redraws the detail at the new size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["refine"] = "refine"
    strength: float = Field(0.3, gt=0, le=1, description="How much is redrawn (0 to 1).")
    steps: int | None = Field(
        None,
        ge=1,
        description="Denoising steps, as for generate (img2img runs strength × steps of "
        "them); default: the job's.",
    )
    prompt: Prompt | None = Field(None, description="Default: the job's.")
    negative_prompt: str | None = Field(None, max_length=4000, description="Default: the job's.")
    guidance_scale: float | None = Field(None, ge=0, le=30, description="Default: the job's.")
    model_id: str | None = Field(
        None, pattern=MODEL_ID_PATTERN, description="An SDXL model; default: the job's."
    )


ChainStep = Annotated[UpscaleStep | RefineStep, Field(discriminator="type")]


def resolve_chain(
    chain: list[ChainStep] | tuple[ChainStep, ...],
    prompt: str,
    negative_prompt: str,
    steps: int,
    guidance_scale: float,
    model_id: str,
) -> tuple[UpscaleStep | RefineStep, ...]:
    """The chain with every refine step's blanks filled from the job."""
    resolved: list[UpscaleStep | RefineStep] = []
    for step in chain:
        if isinstance(step, RefineStep):
            step = step.model_copy(
                update={
                    "steps": step.steps or steps,
                    "prompt": step.prompt or prompt,
                    "negative_prompt": (
                        negative_prompt if step.negative_prompt is None else step.negative_prompt
                    ),
                    "guidance_scale": (
                        guidance_scale if step.guidance_scale is None else step.guidance_scale
                    ),
                    "model_id": step.model_id or model_id,
                }
            )
        resolved.append(step)
    return tuple(resolved)


def upscaled(side: int, scale: float) -> int:
    """A side after upscaling: the nearest multiple of 8 (SDXL works in 8-pixel latents)."""
    return max(8, round(side * scale / 8) * 8)


def step_sizes(
    width: int, height: int, chain: tuple[UpscaleStep | RefineStep, ...]
) -> list[tuple[int, int]]:
    """Each step's output size, generate first."""
    sizes = [(width, height)]
    for step in chain:
        w, h = sizes[-1]
        sizes.append(
            (upscaled(w, step.scale), upscaled(h, step.scale)) if step.type == "upscale" else (w, h)
        )
    return sizes


def refine_denoising_steps(step: RefineStep) -> int:
    """The steps img2img actually runs: ``strength`` of the schedule, at least one."""
    assert step.steps is not None, "resolve the chain first"
    return max(1, int(step.steps * step.strength))


def check_chain(
    width: int, height: int, chain: tuple[UpscaleStep | RefineStep, ...], max_side: int
) -> list[FieldProblem]:
    """Outputs over the operator's largest side, named by the step that makes them."""
    problems = []
    for index, (w, h) in enumerate(step_sizes(width, height, chain)[1:]):
        if max(w, h) > max_side:
            problems.append(
                FieldProblem(
                    f"then.{index}.scale",
                    f"the chain would make {w}x{h} images here, above the largest side "
                    f"allowed ({max_side})",
                    f"ask for a smaller scale, or a smaller size to start from "
                    f"(DREAMFORGE_MAX_OUTPUT_SIDE is {max_side})",
                )
            )
            break
    return problems
