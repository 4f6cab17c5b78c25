"""How far along a job is, as one number from 0 to 1.

A job passes through stages; each stage owns a fixed share of the bar, and denoising owns
most of it, split evenly across the items it renders.
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    QUEUED = "queued"
    LOADING_MODEL = "loading_model"
    DENOISING = "denoising"
    UPSCALING = "upscaling"  # an upscale step's work: it takes denoising's share
    SAVING = "saving"
    DONE = "done"


STAGE_WEIGHTS: dict[Stage, float] = {
    Stage.LOADING_MODEL: 0.10,
    Stage.DENOISING: 0.85,
    Stage.SAVING: 0.05,
}

_ORDER = [Stage.LOADING_MODEL, Stage.DENOISING, Stage.SAVING]


def overall_progress(stage: Stage, fraction: float = 0.0) -> float:
    """Progress of the whole job when ``stage`` is ``fraction`` done."""
    if stage is Stage.UPSCALING:
        stage = Stage.DENOISING
    if stage is Stage.QUEUED:
        return 0.0
    if stage is Stage.DONE:
        return 1.0
    before = sum(STAGE_WEIGHTS[s] for s in _ORDER[: _ORDER.index(stage)])
    clamped = min(max(fraction, 0.0), 1.0)
    return round(before + STAGE_WEIGHTS[stage] * clamped, 4)


def job_progress(step_index: int, step_count: int, stage: Stage, fraction: float = 0.0) -> float:
    """Progress of a job of ``step_count`` steps while step ``step_index`` is in ``stage``:
    each step owns an equal share of the bar."""
    if stage is Stage.QUEUED or stage is Stage.DONE:
        return overall_progress(stage)
    return share_of_job(step_index, step_count, overall_progress(stage, fraction))


def share_of_job(step_index: int, step_count: int, within: float) -> float:
    """Progress of the job when step ``step_index`` (of ``step_count``) is ``within`` done."""
    return round((step_index + within) / step_count, 4)


def items_progress(denoised: float, stored: int, count: int) -> float:
    """Progress of a step of ``count`` items: loading done, ``denoised`` items' worth of
    denoising (fractions included) and ``stored`` items saved."""
    loading = STAGE_WEIGHTS[Stage.LOADING_MODEL]
    denoising = STAGE_WEIGHTS[Stage.DENOISING] * min(denoised / count, 1.0)
    saving = STAGE_WEIGHTS[Stage.SAVING] * min(stored / count, 1.0)
    return round(loading + denoising + saving, 4)
