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
    """One ``generate`` step of ``count`` items, each with its seed (chains add steps)."""
    items = tuple(ItemPlan(i, seed) for i, seed in enumerate(spec.seeds()))
    return [StepPlan(0, "generate", items)]
