"""A runner without a GPU or a model: deterministic images, a set time per step, and
failures on demand. It stands in for the SDXL runner where a test is about the worker
(claims, leases, cancel, time limits, crashes, device memory), not about the pipeline.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from PIL import Image

from dreamforge import __version__
from dreamforge.artifacts.receipts import encode_png
from dreamforge.domain.chains import RefineStep, refine_denoising_steps
from dreamforge.domain.errors import ErrorCode
from dreamforge.domain.jobs import ModelDefaults
from dreamforge.runners.device import InsufficientMemory, check_headroom, item_bytes
from dreamforge.runners.making import lanczos, parent_image, receipt_for
from dreamforge.runners.protocol import (
    DeviceMemory,
    Failed,
    Finished,
    ItemRendered,
    ModelLoaded,
    ModelRef,
    Outcome,
    RenderRequest,
    RunnerCrashed,
    RunnerMessage,
    StepDone,
    StepReports,
    Tick,
)


class Trouble(Enum):
    FAIL = "fail"  # the pipeline raises: a RUNNER_ERROR outcome
    OOM = "oom"  # the device runs out of memory: a GPU_OOM outcome
    CRASH = "crash"  # the process dies
    HANG = "hang"  # stuck inside one device call until killed
    SLOW = "slow"  # every step from then on takes 0.1 s
    LEAK = "leak"  # renders fine, but keeps its working memory for good (a stray reference)


class Where(Enum):
    """The stage of a render where trouble strikes, as in the SDXL runner."""

    LOAD = "load"  # loading the model
    STEP = "step"  # a denoising step (``at_step``)
    DECODE = "decode"  # the VAE decoding the latents
    ENCODE = "encode"  # the PNG and its receipt


@dataclass(frozen=True)
class Plan:
    """What goes wrong, where, for which item, in which step of the job's chain, and in
    how many renders of that step (``times``: the first ones; ``None``: every one)."""

    trouble: Trouble
    at_step: int = 1
    at_item: int = 0
    where: Where = Where.STEP
    times: int | None = None
    in_step: int = 0  # 0: generate; 1 on: the chain's steps


@dataclass
class FakeDevice:
    """A GPU's memory as a ledger: the weights of loaded models, the working memory of the
    item being rendered (given back when it ends, or by ``settle`` after a failure, as
    garbage collection does), and leaks, which only a new process gives back."""

    total_bytes: int = 24 * 2**30
    weights: dict[str, int] = field(default_factory=dict)
    working_bytes: int = 0
    leaked_bytes: int = 0
    peak_bytes: int = 0

    @property
    def allocated_bytes(self) -> int:
        return sum(self.weights.values()) + self.working_bytes + self.leaked_bytes

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.allocated_bytes

    def hold(self, working_bytes: int) -> None:
        self.working_bytes = working_bytes
        self.peak_bytes = max(self.peak_bytes, self.allocated_bytes)

    def settle(self) -> None:
        self.working_bytes = 0

    def reset(self) -> None:
        """The process that held it all is gone."""
        self.weights.clear()
        self.working_bytes = self.leaked_bytes = 0

    def report(self) -> DeviceMemory:
        baseline = sum(self.weights.values())
        peak, self.peak_bytes = max(self.peak_bytes, self.allocated_bytes), self.allocated_bytes
        return DeviceMemory("fake", self.allocated_bytes, self.total_bytes, baseline, peak)


def fake_image(seed: int, width: int, height: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


@dataclass
class FakeRunner:
    """``plans`` maps a prompt to the trouble its jobs meet; other prompts render fine."""

    step_s: float = 0.0
    load_s: float = 0.0
    plans: Mapping[str, Plan] = field(default_factory=dict)
    device: FakeDevice = field(default_factory=FakeDevice)
    model_bytes: int = 2**30  # each loaded model's weights on the device
    rendered: list[tuple[str, int]] = field(default_factory=list)  # (prompt, seed) per image
    renders: Counter[str] = field(default_factory=Counter)  # render requests per prompt
    stepped: Counter[str] = field(default_factory=Counter)  # denoising steps done per prompt
    preloaded: list[tuple[str, ModelDefaults | None]] = field(default_factory=list)
    _loaded: set[str] = field(default_factory=set)
    _tries: Counter[str] = field(default_factory=Counter)  # renders of a plan's step
    _reported: DeviceMemory | None = None  # as of the last request, as the child's is

    def preload(self, model: ModelRef, defaults: ModelDefaults | None = None) -> None:
        self.preloaded.append((model.id, defaults))
        self._load(model.id)

    def memory(self) -> DeviceMemory:
        return self._reported or self.device.report()

    def wake(self) -> None:
        pass  # it ticks after every step anyway

    def recycle(self) -> DeviceMemory:
        self.stop()
        return self.memory()

    def stop(self) -> None:
        self._loaded.clear()
        self.device.reset()
        self._reported = None

    def _load(self, model_id: str) -> None:
        self._loaded.add(model_id)
        self.device.weights[model_id] = self.model_bytes

    def render(
        self,
        request: RenderRequest,
        on_message: Callable[[RunnerMessage], None],
        tick: Callable[[], Tick],
    ) -> Outcome:
        """As the SDXL child does: render, then give back what the request left."""
        try:
            reports = StepReports(request.progress_interval_s, on_message)
            outcome = self._render(request, reports, tick)
        except RunnerCrashed:
            self.stop()  # the process died, and the device memory with it
            raise
        self.device.settle()
        self._reported = self.device.report()
        if isinstance(outcome, Failed):
            return Failed(outcome.code, outcome.message, self._reported)
        return Finished(self._reported)

    def _render(
        self,
        request: RenderRequest,
        on_message: Callable[[RunnerMessage], None],
        tick: Callable[[], Tick],
    ) -> Outcome:
        spec = request.spec
        plan = self._plan(spec.prompt, request.step_index) if spec is not None else None

        def trouble_at(where: Where, item: int = 0) -> Trouble | None:
            if plan is None or plan.where is not where:
                return None
            if where is not Where.LOAD and item < plan.at_item:  # a load is for all items
                return None
            return plan.trouble

        if (trouble := trouble_at(Where.LOAD)) is not None:
            if trouble is Trouble.FAIL:
                message = f"model {request.model.id} could not be loaded (OSError)"
                return Failed(ErrorCode.MODEL_NOT_READY, message, self.memory())
            if (failed := self._meet(trouble, tick)) is not None:
                return failed
        cached = request.model.id in self._loaded
        if not cached:
            self._loading(tick)
            self._load(request.model.id)
        on_message(
            ModelLoaded(request.model.id, 0.0 if cached else self.load_s, cached, "fake", "uint8")
        )
        if spec is None:
            return Finished()
        if request.chain_step is not None:
            return self._chain(request, on_message, tick, plan)
        try:
            check_headroom(self.device.free_bytes, self.device.total_bytes, spec.width, spec.height)
        except InsufficientMemory as exc:
            return Failed(ErrorCode.INSUFFICIENT_VRAM, str(exc))
        for item in request.items:
            self.device.hold(item_bytes(spec.width, spec.height))
            for step in range(1, spec.steps + 1):
                trouble = trouble_at(Where.STEP, item.index)
                at_step = plan.at_step if plan else 0
                slow = trouble is Trouble.SLOW
                time.sleep(0.1 if slow and step >= at_step else self.step_s)
                passive = (Trouble.SLOW, Trouble.LEAK)  # they change how it runs, not whether
                if trouble is not None and step == at_step and trouble not in passive:
                    failed = self._meet(trouble, tick)
                    if failed is not None:
                        return failed
                self.stepped[spec.prompt] += 1
                on_message(StepDone((item.index,), step, spec.steps))
                decision = tick()
                if decision is Tick.CANCEL:
                    return Failed(ErrorCode.CANCELED, "canceled by request")
                if decision is Tick.KILL:
                    raise RunnerCrashed("the runner was killed")
            for where in (Where.DECODE, Where.ENCODE):
                trouble = trouble_at(where, item.index)
                if trouble is not None and (failed := self._meet(trouble, tick, where)):
                    return failed
            image = fake_image(item.seed, spec.width, spec.height)
            receipt = receipt_for(request, item, {"dreamforge": __version__}, "fake", "uint8")
            self.rendered.append(((item.spec or spec).prompt, item.seed))
            if trouble_at(Where.STEP, item.index) is Trouble.LEAK:
                self.device.leaked_bytes += self.device.working_bytes
            self.device.working_bytes = 0
            started = time.perf_counter()
            png = encode_png(image, receipt)
            encode_s = time.perf_counter() - started
            on_message(ItemRendered(item.index, item.seed, png, spec.width, spec.height, encode_s))
        return Finished()

    def _chain(
        self,
        request: RenderRequest,
        on_message: Callable[[RunnerMessage], None],
        tick: Callable[[], Tick],
        plan: Plan | None,
    ) -> Outcome:
        """A chain step, as cheaply as the fake can: upscale resamples for real; refine
        blends seeded noise in, by its strength, over its denoising steps."""
        step = request.chain_step
        for item in request.items:
            source = lanczos(parent_image(item), request.width, request.height)
            steps = refine_denoising_steps(step) if isinstance(step, RefineStep) else 1
            for done in range(1, steps + 1):
                time.sleep(self.step_s)
                if (
                    plan is not None
                    and plan.where is Where.STEP
                    and item.index >= plan.at_item
                    and done == plan.at_step
                    and (failed := self._meet(plan.trouble, tick)) is not None
                ):
                    return failed
                on_message(StepDone((item.index,), done, steps))
                decision = tick()
                if decision is Tick.CANCEL:
                    return Failed(ErrorCode.CANCELED, "canceled by request")
                if decision is Tick.KILL:
                    raise RunnerCrashed("the runner was killed")
            if isinstance(step, RefineStep):
                noise = fake_image(item.seed, request.width, request.height)
                source = Image.blend(source, noise, step.strength / 2)
            receipt = receipt_for(request, item, {"dreamforge": __version__}, "fake", "uint8")
            png = encode_png(source, receipt)
            on_message(ItemRendered(item.index, item.seed, png, request.width, request.height))
        return Finished()

    def _plan(self, prompt: str, step_index: int) -> Plan | None:
        """The prompt's plan, while it still applies to this render of this step."""
        self.renders[prompt] += 1
        plan = self.plans.get(prompt)
        if plan is None or plan.in_step != step_index:
            return None
        self._tries[prompt] += 1
        if plan.times is not None and self._tries[prompt] > plan.times:
            return None
        return plan

    def _loading(self, tick: Callable[[], Tick]) -> None:
        """``load_s`` of loading, ticked as the SDXL runner's relay ticks while its child
        loads (every 0.05 s); only a kill stops a load."""
        done = time.monotonic() + self.load_s
        while (left := done - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
            if tick() is Tick.KILL:
                raise RunnerCrashed("the runner was killed")

    def _meet(
        self, trouble: Trouble, tick: Callable[[], Tick], where: Where = Where.STEP
    ) -> Failed | None:
        if trouble is Trouble.FAIL:
            return Failed(
                ErrorCode.RUNNER_ERROR, f"RuntimeError: the fake pipeline failed ({where.value})"
            )
        if trouble is Trouble.OOM:
            return Failed(ErrorCode.GPU_OOM, "OutOfMemoryError: the fake device is full")
        if trouble is Trouble.CRASH:
            raise RunnerCrashed("the runner process exited with code -9")
        while tick() is not Tick.KILL:  # HANG: only a kill gets it out
            time.sleep(0.01)
        raise RunnerCrashed("the runner was killed")
