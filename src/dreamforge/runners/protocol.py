"""Messages between a worker and its runner child process (pickled over a pipe)."""

from __future__ import annotations

from dataclasses import dataclass

from dreamforge.domain.errors import ErrorCode
from dreamforge.domain.jobs import JobSpec
from dreamforge.store.records import Model


@dataclass(frozen=True)
class ModelRef:
    id: str
    path: str
    format: str
    sha256: str
    source: str

    @classmethod
    def of(cls, model: Model) -> ModelRef:
        return cls(model.id, model.path, model.format, model.sha256, model.source)


@dataclass(frozen=True)
class ItemToRender:
    index: int
    seed: int


@dataclass(frozen=True)
class GenerateRequest:
    """Render ``items`` of ``spec`` with ``model``; with no items, only load the model."""

    spec: JobSpec | None
    model: ModelRef
    items: tuple[ItemToRender, ...]
    step_index: int = 0


@dataclass(frozen=True)
class ModelLoaded:
    model_id: str
    seconds: float
    cached: bool
    device: str
    dtype: str


@dataclass(frozen=True)
class StepDone:
    item_index: int
    step: int
    steps: int


@dataclass(frozen=True)
class ItemRendered:
    item_index: int
    seed: int
    png: bytes
    width: int
    height: int


@dataclass(frozen=True)
class Finished:
    pass


@dataclass(frozen=True)
class Failed:
    code: ErrorCode
    message: str


RunnerMessage = ModelLoaded | StepDone | ItemRendered | Finished | Failed
