"""What a job renders: its steps, in order, and the items of each, with their seeds."""

from __future__ import annotations

from dataclasses import dataclass

from dreamforge.domain.chains import RefineStep, UpscaleStep, step_sizes
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
    width: int  # of what the step makes
    height: int
    chain_step: UpscaleStep | RefineStep | None = None  # None: generate


def plan_steps(spec: JobSpec) -> list[StepPlan]:
    """A ``generate`` step of ``count`` items, each with its seed, then one step per link
    of the chain over the same items."""
    items = tuple(ItemPlan(i, seed) for i, seed in enumerate(spec.seeds()))
    sizes = step_sizes(spec.width, spec.height, spec.then)
    steps = [StepPlan(0, "generate", items, *sizes[0])]
    for index, link in enumerate(spec.then, start=1):
        steps.append(StepPlan(index, link.type, items, *sizes[index], link))
    return steps
