"""The runner port: what a worker asks of whatever renders images, and what it hears back.

A runner renders one step's items of a job and reports each denoising step, each finished
item and the outcome as typed messages (the SDXL runner pickles them over a pipe from its
child process). The worker steers it between steps through ``tick``: go on, cancel at the
next step, or kill now; ``wake`` has it ask at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

from dreamforge.domain.chains import RefineStep, UpscaleStep
from dreamforge.domain.errors import ErrorCode
from dreamforge.domain.jobs import JobSpec, ModelDefaults
from dreamforge.domain.records import Model


@dataclass(frozen=True)
class ModelRef:
    id: str
    path: str
    format: str
    sha256: str
    source: str
    files: tuple[tuple[str, int], ...] = ()  # (path, size) of each weight file, as registered

    @classmethod
    def of(cls, model: Model) -> ModelRef:
        files = tuple((f.path, f.size_bytes) for f in model.files)
        return cls(model.id, model.path, model.format, model.sha256, model.source, files)


@dataclass(frozen=True)
class Parent:
    """The image a chain step works on: the previous step's artifact, and its bytes."""

    key: str
    sha256: str
    png: bytes


@dataclass(frozen=True)
class ItemToRender:
    index: int
    seed: int
    parent: Parent | None = None  # chain steps only
    # Rendered beside other jobs' items: its own job's spec (prompts, receipt) and its
    # index there; ``index`` is then its place in the shared request.
    spec: JobSpec | None = None
    item_index: int | None = None


@dataclass(frozen=True)
class RenderRequest:
    """Render ``items`` of ``spec`` with ``model`` as step ``step_index`` of a job; with
    no spec, only load the model (a preload), and where the runner compiles, compile for
    one image of its ``defaults`` once no job comes (a job sent meanwhile is not held back).

    A chain step (``chain_step`` set) works on each item's parent image; ``step_model`` is
    the model it runs (the upscaler, or refine's SDXL model), ``None`` for resampling, and
    ``width`` and ``height`` the size it makes.
    """

    spec: JobSpec | None
    model: ModelRef
    items: tuple[ItemToRender, ...]
    step_index: int = 0
    step_type: str = "generate"
    max_batch: int = 1  # items rendered together on the device, at most
    chain_step: UpscaleStep | RefineStep | None = None
    step_model: ModelRef | None = None
    width: int = 0
    height: int = 0
    tile_px: int = 512  # upscalers run over tiles of at most this size
    # Denoising steps are reported at most this often (``StepReports``); 0: every step.
    progress_interval_s: float = 0.0
    defaults: ModelDefaults | None = None


@dataclass(frozen=True)
class ModelLoaded:
    model_id: str
    seconds: float
    cached: bool
    device: str
    dtype: str
    evicted: tuple[str, ...] = ()  # models unloaded to make room for this one


@dataclass(frozen=True)
class StepDone:
    """One denoising step (``step`` counts from 1 to ``steps``) of the items rendered
    together (a micro-batch)."""

    items: tuple[int, ...]
    step: int
    steps: int


@dataclass(frozen=True)
class ItemRendered:
    item_index: int
    seed: int
    png: bytes
    width: int
    height: int
    encode_s: float = 0.0  # the PNG and its receipt


@dataclass(frozen=True)
class DeviceMemory:
    """Device memory after a request: what the pipeline holds, what its loaded models
    alone held when they were loaded (the baseline it should come back to), and the
    device's size; ``None`` where the device cannot tell."""

    device: str
    allocated_bytes: int | None
    total_bytes: int | None
    baseline_bytes: int | None = None
    peak_bytes: int | None = None  # the most held at once during the request

    @property
    def excess_bytes(self) -> int | None:
        """Held beyond the baseline: what a job left behind."""
        if self.allocated_bytes is None or self.baseline_bytes is None:
            return None
        return self.allocated_bytes - self.baseline_bytes


@dataclass(frozen=True)
class Finished:
    memory: DeviceMemory | None = None


@dataclass(frozen=True)
class Failed:
    code: ErrorCode
    message: str
    memory: DeviceMemory | None = None


@dataclass(frozen=True)
class RunnerNote:
    """Something the runner did on its own between requests (a background compile),
    told with the next request."""

    message: str


Outcome = Finished | Failed
RunnerMessage = ModelLoaded | StepDone | ItemRendered | RunnerNote | Finished | Failed


class StepReports:
    """Passes a runner's messages on, its denoising steps at most every ``interval_s``.

    A progress bar needs a few updates a second, not one per 20 ms step, and every report
    costs the worker a wake-up and each follower an SSE event. A step that comes sooner
    than that after the last one reported is left out: the next one reported covers it.
    The first and the last step of each micro-batch always go (the last is when the
    worker counts its items denoised). Everything else goes through as it comes.
    """

    def __init__(
        self,
        interval_s: float,
        send: Callable[[RunnerMessage], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval_s = interval_s
        self._send = send
        self._clock = clock
        self._last = -math.inf

    def __call__(self, message: RunnerMessage) -> None:
        if isinstance(message, StepDone):
            now = self._clock()
            inner = 1 < message.step < message.steps
            if inner and now - self._last < self._interval_s:
                return
            self._last = now
        self._send(message)


class Tick(Enum):
    """The worker's word between two messages of a runner."""

    CONTINUE = "continue"
    CANCEL = "cancel"  # stop at the next denoising step, with a CANCELED outcome
    KILL = "kill"  # stop now, whatever it is doing (time limit, lease lost, shutdown)


class RunnerCrashed(Exception):
    """The runner died or was killed before it finished the request."""


class Runner(Protocol):
    def preload(self, model: ModelRef, defaults: ModelDefaults | None = None) -> None:
        """Start loading ``model`` now, so that the first job finds it loaded (and, where
        the runner compiles, compiled for one image of its ``defaults``)."""
        ...

    def render(
        self,
        request: RenderRequest,
        on_message: Callable[[RunnerMessage], None],
        tick: Callable[[], Tick],
    ) -> Outcome:
        """Render the request's items, handing each message to ``on_message`` and asking
        ``tick`` between messages; raises ``RunnerCrashed`` if it died or was killed."""
        ...

    def wake(self) -> None:
        """Ask ``tick`` now rather than at the next message: the worker has news (a cancel,
        a shutdown). Safe from any thread."""
        ...

    def memory(self) -> DeviceMemory | None:
        """Device memory as of the last request, if the runner knows it."""
        ...

    def recycle(self) -> DeviceMemory | None:
        """Start afresh, with nothing loaded (its memory left behind goes with it); the
        device memory after."""
        ...

    def stop(self) -> None: ...
