"""What a job renders: its steps, in order, and the items of each, with their seeds."""

from __future__ import annotations

from dataclasses import dataclass

from dreamforge.domain.jobs import JobSpec


@dataclass(frozen=True)
class ItemPlan:
    index: int
    seed: int


@dataclass(frozen=True)
class StepPlan:
    index: int
    type: str
    items: tuple[ItemPlan, ...]


def plan_steps(spec: JobSpec) -> list[StepPlan]:
    """One ``generate`` step of one item, seeded by the spec: the only shape a job has
    until batches (``count``) and chains (``upscale``) arrive."""
    return [StepPlan(0, "generate", (ItemPlan(0, spec.seed),))]
