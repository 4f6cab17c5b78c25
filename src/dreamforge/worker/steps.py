"""Walks a job's steps and each step's items through a runner, and records what happens.

The driver turns runner messages into the job's events: stage changes and log lines are
durable; denoising progress goes to followers at once and to the database at most every
``progress_persist_s`` (a 100-item, 30-step job must not cost 3,000 transactions). A stage
change waits up to ``STAGE_HOLD_S`` (or ``progress_interval_s`` if shorter) to be written
with whatever comes next (a cached model's loading and denoising stages, the saving stage
and the image), and is always written before anything later reaches a follower. Items a
previous attempt already stored are skipped, and artifact keys are deterministic, so a
job run twice stores each image once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dreamforge.artifacts.keys import artifact_key
from dreamforge.artifacts.seal import Sealer
from dreamforge.artifacts.storage import ArtifactStorage
from dreamforge.domain.chains import RefineStep, UpscaleStep, refine_denoising_steps
from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import ErrorCode, JobError
from dreamforge.domain.events import ArtifactData, EventData, ProgressData, StageData, log_event
from dreamforge.domain.jobs import JobStatus
from dreamforge.domain.plan import StepPlan, plan_steps
from dreamforge.domain.progress import Stage, items_progress, job_progress, share_of_job
from dreamforge.domain.records import Artifact, Job, Model
from dreamforge.events.writer import JobWriter
from dreamforge.metrics import ITEMS_RENDERED, MODEL_EVICTIONS, MODEL_LOADS, STAGE_SECONDS
from dreamforge.models.registry import ModelRegistry
from dreamforge.runners.protocol import (
    Failed,
    ItemRendered,
    ItemToRender,
    ModelLoaded,
    ModelRef,
    Outcome,
    Parent,
    RenderRequest,
    Runner,
    RunnerMessage,
    RunnerNote,
    StepDone,
    Tick,
)
from dreamforge.store.jobs import JobRepository

# How long a stage change waits to be written with the next event: short enough that a
# follower does not notice, long enough to span a cached model's load or a small image's
# encoding. Not the progress interval itself, which an operator may raise to seconds. What
# has waited this long is written at the runner's next tick (a silent SDXL child is ticked
# every ``runners.process.QUIET_TICK_S``, a remote prediction every ``remote_poll_s``).
STAGE_HOLD_S = 0.1


@dataclass(frozen=True)
class JobOutcome:
    """How a job's steps ended; the lifecycle turns it into the job's final status."""

    status: JobStatus
    error: JobError | None = None

    @classmethod
    def failed(cls, code: ErrorCode, message: str) -> JobOutcome:
        return cls(JobStatus.FAILED, JobError(code=code, message=message))


class StorageFailed(Exception):
    """An image could not be written to the artifact store."""


class StepDriver:
    def __init__(
        self,
        jobs: JobRepository,
        writer: JobWriter,
        models: ModelRegistry,
        storage: ArtifactStorage,
        runner: Runner,
        progress_persist_s: float,
        max_batch: int = 1,
        sealer: Sealer | None = None,
        tile_px: int = 512,
        progress_interval_s: float = 0.0,
    ) -> None:
        self.jobs = jobs
        self.writer = writer
        self.models = models
        self.storage = storage
        self.runner = runner
        self.progress_persist_s = progress_persist_s
        self.max_batch = max_batch
        self.sealer = sealer  # None: images stored unsealed (tests of other things)
        self.tile_px = tile_px
        self.progress_interval_s = progress_interval_s
        self.stage_hold_s = min(progress_interval_s, STAGE_HOLD_S)

    def drive(
        self, job: Job, tick: Callable[[], Tick], notes: Sequence[EventData] = ()
    ) -> JobOutcome:
        """Render every step of ``job`` that is not stored yet, writing ``notes`` with the
        first stage change; raises ``RunnerCrashed``."""
        spec = job.spec
        steps = plan_steps(spec)
        for step in steps:
            wanted = [spec.model_id]
            if step.chain_step is not None and step.chain_step.model_id is not None:
                wanted.append(step.chain_step.model_id)
            found = [self._ready(model_id) for model_id in wanted]
            for failure in (f for f in found if isinstance(f, JobOutcome)):
                self.writer.record(job.id, notes)
                return failure
            model, *step_model = [ModelRef.of(m) for m in found if isinstance(m, Model)]
            run = _StepRun(self, job, step, len(steps))
            failed = run.render(model, step_model[0] if step_model else None, tick, notes)
            notes = ()
            if failed is not None:
                if failed.code is ErrorCode.CANCELED:
                    return JobOutcome(JobStatus.CANCELED)
                return JobOutcome.failed(failed.code, failed.message)
        return JobOutcome(JobStatus.SUCCEEDED)

    def drive_together(
        self,
        jobs: Sequence[Job],
        ticks: Mapping[str, Callable[[], Tick]],
        notes: Mapping[str, Sequence[EventData]],
        leave: Callable[[str, JobOutcome | None], None],
    ) -> dict[str, JobOutcome | None]:
        """Jobs of one shape (``JobSpec.batches_with``; generate only, never run before)
        denoised in shared micro-batches, each with its own seeds, prompts, events,
        images and receipts. A job whose tick says cancel (or kill: its time limit, its
        lease) leaves at the next step: ``leave`` ends it at once, its images still to
        come are dropped, and the others go on. The outcome of each job that stayed;
        raises ``RunnerCrashed``."""
        model = self._ready(jobs[0].spec.model_id)
        if isinstance(model, JobOutcome):
            for job in jobs:
                self.writer.record(job.id, notes.get(job.id, ()))
            return {job.id: model for job in jobs}
        ref = ModelRef.of(model)
        runs: dict[str, _StepRun] = {}
        place: list[tuple[str, int]] = []  # the shared request's items: (job, its item)
        items: list[ItemToRender] = []
        for job in jobs:
            (step,) = plan_steps(job.spec)
            runs[job.id] = _StepRun(self, job, step, 1)
            for item in runs[job.id].begin(ref, None, notes.get(job.id, ())):
                place.append((job.id, item.index))
                items.append(
                    ItemToRender(len(items), item.seed, spec=job.spec, item_index=item.index)
                )
        gone: set[str] = set()

        def relay(message: RunnerMessage) -> None:
            if isinstance(message, StepDone):
                for job_id, run in runs.items():
                    mine = tuple(place[i][1] for i in message.items if place[i][0] == job_id)
                    if mine and job_id not in gone:
                        run.relay(StepDone(mine, message.step, message.steps))
            elif isinstance(message, ItemRendered):
                job_id, local = place[message.item_index]
                if job_id not in gone:
                    runs[job_id].relay(dataclasses.replace(message, item_index=local))
            else:
                for job_id, run in runs.items():
                    if job_id not in gone:
                        run.relay(message)

        def tick() -> Tick:
            for job_id, job_tick in ticks.items():
                if job_id in gone:
                    continue
                runs[job_id].write_due()
                decision = job_tick()
                if decision is Tick.CONTINUE:
                    continue
                gone.add(job_id)
                runs[job_id].flush()
                canceled = decision is Tick.CANCEL
                leave(job_id, JobOutcome(JobStatus.CANCELED) if canceled else None)
            return Tick.CANCEL if len(gone) == len(runs) else Tick.CONTINUE

        request = runs[jobs[0].id].request(ref, None, tuple(items))
        try:
            outcome = self.runner.render(request, relay, tick)
        finally:
            for run in runs.values():
                run.flush()
        results: dict[str, JobOutcome | None] = {}
        for job_id, run in runs.items():
            if job_id in gone:
                continue
            failed = run.end(outcome)
            if failed is None:
                results[job_id] = JobOutcome(JobStatus.SUCCEEDED)
            elif failed.code is ErrorCode.CANCELED:
                results[job_id] = JobOutcome(JobStatus.CANCELED)
            else:
                results[job_id] = JobOutcome.failed(failed.code, failed.message)
        return results

    def _ready(self, model_id: str) -> Model | JobOutcome:
        """The model, or the failure of a job that needs it (removed since the job was
        accepted, or not ready any more)."""
        model = self.models.get(model_id)
        if model is not None and model.status == "ready":
            return model
        code = ErrorCode.MODEL_NOT_FOUND if model is None else ErrorCode.MODEL_NOT_READY
        state = "not registered" if model is None else model.status
        return JobOutcome.failed(code, f"model {model_id!r} is {state}")

    def parents(self, job: Job, step: StepPlan, items: set[int]) -> dict[int, Parent]:
        """The previous step's images of ``items``, which a chain step works on."""
        parents = {}
        for artifact in self.jobs.artifacts(job.id):
            if artifact.step_index == step.index - 1 and artifact.item_index in items:
                try:
                    png = self.storage.get(artifact.key)
                except Exception as exc:
                    raise StorageFailed(
                        f"reading {artifact.key} failed: {type(exc).__name__}: {exc}"
                    ) from exc
                parents[artifact.item_index] = Parent(artifact.key, artifact.sha256, png)
        return parents

    def stored_items(self, job: Job, step: StepPlan) -> set[int]:
        """Items of ``step`` a previous attempt stored; a first attempt has none."""
        if job.attempts == 1:
            return set()
        return {
            a.item_index
            for a in self.jobs.artifacts(job.id)
            if a.step_index == step.index and self.storage.exists(a.key)
        }


class _StepRun:
    """One step of one job: its stage events, its progress, its artifacts."""

    def __init__(self, driver: StepDriver, job: Job, step: StepPlan, step_count: int) -> None:
        self._driver = driver
        self._writer = driver.writer
        self._job = job
        self._step = step
        self._step_count = step_count
        self._last_persist = 0.0
        self._unsaved: float | None = None
        self._denoised = 0  # items of this step whose denoising has finished
        self._stored = 0  # items of this step stored
        self._batch_started = time.monotonic()  # when the current micro-batch began
        self._step_model: ModelRef | None = None
        self._work = Stage.UPSCALING if step.type == "upscale" else Stage.DENOISING
        self._working = False  # in the work stage yet (resampling loads nothing first)
        # Events and job fields waiting to be written with the next write (``_hold``).
        self._held: list[EventData] = []
        self._held_fields: dict[str, Any] = {}
        self._held_since: float | None = None

    def _log(self, message: str, stage: Stage | None = None) -> EventData:
        return log_event(message, stage=stage, step_index=self._step.index)

    def render(
        self,
        model: ModelRef,
        step_model: ModelRef | None,
        tick: Callable[[], Tick],
        notes: Sequence[EventData],
    ) -> Failed | None:
        def ticked() -> Tick:
            self.write_due()
            return tick()

        try:
            items = self.begin(model, step_model, notes)
            if not items:
                return None
            request = self.request(model, step_model, items)
            outcome = self._driver.runner.render(request, self.relay, ticked)
        finally:
            self.flush()
        return self.end(outcome)

    def begin(
        self, model: ModelRef, step_model: ModelRef | None, notes: Sequence[EventData]
    ) -> tuple[ItemToRender, ...]:
        """Enter the step (its loading stage, with ``notes``); the items left to render."""
        step = self._step
        done = self._driver.stored_items(self._job, step)
        todo = [i for i in step.items if i.index not in done]
        parents = (
            self._driver.parents(self._job, step, {i.index for i in todo}) if step.index else {}
        )
        items = tuple(ItemToRender(i.index, i.seed, parents.get(i.index)) for i in todo)
        skipped = [self._log(f"{len(done)} item(s) already stored; skipping them")] if done else []
        self._denoised = self._stored = len(done)
        self._step_model = step_model
        loading = (
            f"loading model {model.id}"
            if step.type == "generate"
            else f"loading model {step_model.id}"
            if step_model is not None
            else "resampling with Lanczos: no model to load"
        )
        self._enter(Stage.LOADING_MODEL, loading, before=[*notes, *skipped])
        return items

    def request(
        self, model: ModelRef, step_model: ModelRef | None, items: tuple[ItemToRender, ...]
    ) -> RenderRequest:
        step = self._step
        return RenderRequest(
            self._job.spec,
            model,
            items,
            step.index,
            step.type,
            max_batch=self._driver.max_batch,
            chain_step=step.chain_step,
            step_model=step_model,
            width=step.width,
            height=step.height,
            tile_px=self._driver.tile_px,
            progress_interval_s=self._driver.progress_interval_s,
        )

    def flush(self) -> None:
        """Write what is held and the last progress figure, whatever happened."""
        unsaved, self._unsaved = self._unsaved, None
        if self._held:
            if unsaved is not None:
                self._held_fields["progress"] = unsaved
            self._write_held()
        elif unsaved is not None:
            self._driver.jobs.set_progress(self._job.id, unsaved)

    def _hold(self, events: Sequence[EventData], **fields: Any) -> None:
        """Write ``events`` and ``fields`` with the next write, or by themselves once they
        have waited ``stage_hold_s`` (``write_due``, at every tick of the runner)."""
        self._held += events
        self._held_fields.update(fields)
        if self._held_since is None:
            self._held_since = time.monotonic()
        if self._driver.stage_hold_s <= 0:
            self._write_held()

    def _take_held(self) -> tuple[list[EventData], dict[str, Any]]:
        held, fields = self._held, self._held_fields
        self._held, self._held_fields, self._held_since = [], {}, None
        return held, fields

    def _write_held(self, events: Sequence[EventData] = ()) -> None:
        held, fields = self._take_held()
        self._writer.record(self._job.id, [*held, *events], **fields)

    def write_due(self) -> None:
        """Write what has been held for ``stage_hold_s`` (a model still loading,
        an image still being encoded: a follower hears of the stage meanwhile)."""
        since = self._held_since
        if since is not None and time.monotonic() - since >= self._driver.stage_hold_s:
            self._write_held()

    def end(self, outcome: Outcome) -> Failed | None:
        """The step's failure, with which items were kept; ``None`` when it finished."""
        if isinstance(outcome, Failed) and outcome.code is not ErrorCode.CANCELED:
            # Finished items are kept; say which are and which are not.
            missing = len(self._step.items) - self._stored
            summary = f"{missing} of {len(self._step.items)} item(s) not rendered"
            if self._stored:
                summary += f"; the {self._stored} stored are kept"
            return Failed(outcome.code, f"{outcome.message} ({summary})", outcome.memory)
        return outcome if isinstance(outcome, Failed) else None

    def _progress(self, stage: Stage, fraction: float = 0.0) -> float:
        return job_progress(self._step.index, self._step_count, stage, fraction)

    def _enter(self, stage: Stage, message: str, before: Sequence[EventData] = ()) -> None:
        progress = (
            self._progress(stage)
            if stage is not Stage.SAVING
            else self._items_progress(self._denoised)
        )
        entered = StageData(stage=stage, progress=progress, step_index=self._step.index)
        self._unsaved = None
        self._hold(
            [*before, entered, self._log(message, stage)], stage=stage.value, progress=progress
        )
        self._working = stage is self._work
        self._last_persist = time.monotonic()  # the figure is written with the stage

    def relay(self, message: RunnerMessage) -> None:
        if isinstance(message, StepDone):
            self._step_done(message)
        elif isinstance(message, ModelLoaded):
            MODEL_LOADS.labels("cache" if message.cached else "disk").inc()
            STAGE_SECONDS.labels("model_load").observe(message.seconds)
            MODEL_EVICTIONS.inc(len(message.evicted))
            self._batch_started = time.monotonic()
            how = "from cache" if message.cached else "from disk"
            ready = self._log(
                f"model {message.model_id} ready ({how}, {message.seconds:.2f}s) "
                f"on {message.device}/{message.dtype}",
                Stage.LOADING_MODEL,
            )
            self._enter(self._work, self._describe(), before=[ready])
        elif isinstance(message, ItemRendered):
            self._store(message)
        elif isinstance(message, RunnerNote):
            self._write_held([self._log(message.message)])

    def _describe(self) -> str:
        """What the work stage of this step does, for the job's log."""
        step, left = self._step, len(self._step.items) - self._denoised
        size = f"{step.width}x{step.height}"
        link = step.chain_step
        if isinstance(link, UpscaleStep):
            how = f"with {self._step_model.id}" if self._step_model else "by Lanczos resampling"
            return f"upscaling {left} item(s) x{link.scale:g} to {size} {how}"
        if isinstance(link, RefineStep):
            runs = refine_denoising_steps(link)
            return f"refining {left} item(s) at {size}: strength {link.strength:g}, {runs} steps"
        spec = self._job.spec
        return (
            f"denoising {left} item(s), {spec.steps} steps, {size}, "
            f"in micro-batches of up to {self._driver.max_batch}"
        )

    def _step_done(self, message: StepDone) -> None:
        if not self._working:
            self._enter(self._work, self._describe())
        count = len(self._step.items)
        under_way = len(message.items) * message.step / message.steps
        if message.step == message.steps:
            self._denoised += len(message.items)
            under_way = 0.0
            now = time.monotonic()
            STAGE_SECONDS.labels("denoise").observe(now - self._batch_started)
            self._batch_started = now
        progress = self._items_progress(self._denoised + under_way)
        data = ProgressData(
            progress=progress,
            stage=self._work,
            step_index=self._step.index,
            item_index=message.items[0],
            items=message.items,
            step=message.step,
            steps=message.steps,
        )
        now = time.monotonic()
        persist = now - self._last_persist >= self._driver.progress_persist_s
        if persist:
            self._last_persist = now
        if self._held:  # a follower hears of the stage before its progress
            self._write_held()
        self._writer.progress(self._job.id, data, persist)
        self._unsaved = None if persist else progress
        if self._denoised == count:
            self._enter(Stage.SAVING, f"saving the last of {count} item(s)")

    def _items_progress(self, denoised: float) -> float:
        within = items_progress(denoised, self._stored, len(self._step.items))
        return share_of_job(self._step.index, self._step_count, within)

    def _store(self, item: ItemRendered) -> None:
        step = self._step
        key = artifact_key(self._job.id, step.index, step.type, item.item_index)
        STAGE_SECONDS.labels("encode").observe(item.encode_s)
        sealer = self._driver.sealer
        png = sealer.seal(item.png) if sealer is not None else item.png
        started = time.monotonic()
        try:
            self._driver.storage.put(key, png, "image/png")
        except Exception as exc:
            raise StorageFailed(f"storing {key} failed: {type(exc).__name__}: {exc}") from exc
        STAGE_SECONDS.labels("upload").observe(time.monotonic() - started)
        ITEMS_RENDERED.inc()
        artifact = Artifact(
            job_id=self._job.id,
            step_index=step.index,
            step_type=step.type,
            item_index=item.item_index,
            key=key,
            content_type="image/png",
            size_bytes=len(png),
            sha256=hashlib.sha256(png).hexdigest(),
            width=item.width,
            height=item.height,
            seed=item.seed,
            created_at=utcnow(),
        )
        self._stored += 1
        held, fields = self._take_held()
        fields["progress"] = self._items_progress(self._denoised)
        self._writer.save_artifact(
            artifact,
            [
                *held,
                ArtifactData.of(artifact),
                self._log(
                    f"stored item {item.item_index} (seed {item.seed}) as {key}, "
                    f"{artifact.size_bytes} bytes",
                    Stage.SAVING,
                ),
            ],
            **fields,
        )
        self._unsaved = None
