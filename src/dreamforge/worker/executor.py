"""Runs one job: claim it, render what is not yet rendered, store it, finish it.

Safe to call twice for the same job (a duplicate delivery, a retry after a crash): the
claim is a conditional update, artifact keys are deterministic, and items already stored
are skipped.

Every write the executor makes goes with the events that describe it, in one transaction:
the bookkeeping runs beside the denoising on the same cores, so it is kept to one write
per stage change and one per step.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from dreamforge.artifacts.keys import artifact_key
from dreamforge.artifacts.storage import ArtifactStorage
from dreamforge.domain.errors import ErrorCode
from dreamforge.domain.events import EventType, LogLevel
from dreamforge.domain.jobs import JobStatus
from dreamforge.domain.progress import Stage, denoising_fraction, overall_progress
from dreamforge.events.log import EventLog, log_event, status_event
from dreamforge.events.notifier import Notifier
from dreamforge.models.registry import ModelRegistry
from dreamforge.runners.host import RunnerCrashed, RunnerHost, Tick
from dreamforge.runners.protocol import (
    Failed,
    GenerateRequest,
    ItemRendered,
    ItemToRender,
    ModelLoaded,
    ModelRef,
    RunnerMessage,
    StepDone,
)
from dreamforge.store.jobs import JobRepository, NewEvent
from dreamforge.store.records import Artifact, Job
from dreamforge.store.tables import utcnow

log = structlog.get_logger(__name__)

GENERATE_STEP = (0, "generate")
ITEM_COUNT = 1  # batches (count > 1) come with a later milestone


@dataclass
class ExecutorSettings:
    worker_id: str
    lease_s: float
    heartbeat_s: float
    time_limit_s: float
    # Cancel requests arrive through the notifier at once; the database is only re-read
    # this often, in case a signal was lost.
    cancel_poll_s: float = 1.0


@dataclass
class _Watch:
    """What the run loop keeps between ticks."""

    started: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    last_cancel_check: float = field(default_factory=time.monotonic)
    cancel_seen: bool = False
    timed_out: bool = False


def _error(code: ErrorCode, message: str) -> dict[str, Any]:
    return {"code": code.value, "message": message}


def _stage_events(stage: Stage, message: str) -> list[NewEvent]:
    return [
        (EventType.STAGE, {"stage": stage.value, "progress": overall_progress(stage)}),
        log_event(message, stage=stage),
    ]


class JobExecutor:
    def __init__(
        self,
        jobs: JobRepository,
        events: EventLog,
        notifier: Notifier,
        models: ModelRegistry,
        storage: ArtifactStorage,
        runner: RunnerHost,
        settings: ExecutorSettings,
    ) -> None:
        self._jobs = jobs
        self._events = events
        self._notifier = notifier
        self._models = models
        self._storage = storage
        self._runner = runner
        self._settings = settings
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Hand the job in hand back to the queue instead of finishing it (shutdown)."""
        self._stopping.set()

    def run(self, job_id: str) -> JobStatus | None:
        """Run the job if it can be claimed; the final status, or ``None`` if not ours."""
        owner = self._settings.worker_id
        job = self._events.claim(job_id, owner, self._settings.lease_s)
        if job is None:
            log.info("job.not_claimed", job_id=job_id)
            return None
        try:
            return self._execute(job)
        except Exception as exc:  # the job must end, whatever broke
            log.exception("job.crashed", job_id=job_id)
            return self._finish(job, JobStatus.FAILED, _error(ErrorCode.RUNNER_ERROR, str(exc)))
        finally:
            self._notifier.forget_cancel(job_id)

    def _execute(self, job: Job) -> JobStatus | None:
        spec = job.spec
        retry = " (retry)" if job.attempts > 1 else ""
        started = log_event(
            f"started on worker {self._settings.worker_id}, attempt {job.attempts}{retry}",
            stage="claimed",
            attempt=job.attempts,
        )
        model = self._models.get(spec.model_id)
        if model is None or model.status != "ready":
            code = ErrorCode.MODEL_NOT_FOUND if model is None else ErrorCode.MODEL_NOT_READY
            state = "not registered" if model is None else model.status
            return self._finish(
                job, JobStatus.FAILED, _error(code, f"model {spec.model_id!r} is {state}")
            )
        done = self._stored_items(job)
        items = tuple(ItemToRender(i, spec.seed + i) for i in range(ITEM_COUNT) if i not in done)
        notes = [log_event(f"{len(done)} item(s) already stored; skipping them")] if done else []
        self._record_stage(
            job, Stage.LOADING_MODEL, f"loading model {model.id}", before=[started, *notes]
        )
        watch = _Watch()
        if items:
            request = GenerateRequest(
                spec=spec,
                model=ModelRef.of(model),
                items=items,
            )
            try:
                outcome = self._runner.run(
                    request,
                    on_message=lambda message: self._relay(job, message),
                    tick=lambda: self._tick(job, watch),
                )
            except RunnerCrashed as exc:
                if self._stopping.is_set():
                    return self._release(job)
                if watch.timed_out:
                    return self._finish(job, JobStatus.FAILED, self._timeout_error())
                return self._finish(job, JobStatus.FAILED, _error(ErrorCode.RUNNER_ERROR, str(exc)))
            if isinstance(outcome, Failed):
                if outcome.code is ErrorCode.CANCELED:
                    return self._finish(job, JobStatus.CANCELED, None)
                return self._finish(job, JobStatus.FAILED, _error(outcome.code, outcome.message))
        elapsed = time.monotonic() - watch.started
        return self._finish(
            job,
            JobStatus.SUCCEEDED,
            None,
            before=[log_event(f"finished in {elapsed:.2f}s", stage=Stage.DONE)],
        )

    def _stored_items(self, job: Job) -> set[int]:
        """Items a previous attempt already stored; a first attempt has none to look for."""
        if job.attempts == 1:
            return set()
        return {
            a.item_index
            for a in self._jobs.artifacts(job.id)
            if (a.step_index, a.step_type) == GENERATE_STEP and self._storage.exists(a.key)
        }

    def _relay(self, job: Job, message: RunnerMessage) -> None:
        if isinstance(message, ModelLoaded):
            how = "from cache" if message.cached else "from disk"
            ready = log_event(
                f"model {message.model_id} ready ({how}, {message.seconds:.2f}s) "
                f"on {message.device}/{message.dtype}",
                stage=Stage.LOADING_MODEL,
                device=message.device,
            )
            spec = job.spec
            self._record_stage(
                job,
                Stage.DENOISING,
                f"denoising {spec.steps} steps, {spec.width}x{spec.height}, seed {spec.seed}",
                before=[ready],
            )
        elif isinstance(message, StepDone):
            fraction = denoising_fraction(
                message.item_index, ITEM_COUNT, message.step, message.steps
            )
            progress = overall_progress(Stage.DENOISING, fraction)
            data = {
                "progress": progress,
                "stage": Stage.DENOISING.value,
                "item_index": message.item_index,
                "step": message.step,
                "steps": message.steps,
            }
            self._events.record(job.id, [(EventType.PROGRESS, data)], progress=progress)
        elif isinstance(message, ItemRendered):
            self._store(job, message)

    def _store(self, job: Job, item: ItemRendered) -> None:
        step_index, step_type = GENERATE_STEP
        key = artifact_key(job.id, step_index, step_type, item.item_index)
        self._storage.put(key, item.png, "image/png")
        artifact = Artifact(
            job_id=job.id,
            step_index=step_index,
            step_type=step_type,
            item_index=item.item_index,
            key=key,
            content_type="image/png",
            size_bytes=len(item.png),
            sha256=hashlib.sha256(item.png).hexdigest(),
            width=item.width,
            height=item.height,
            seed=item.seed,
            created_at=utcnow(),
        )
        data = {k: v for k, v in artifact.__dict__.items() if k not in ("job_id", "created_at")}
        self._events.save_artifact(
            artifact,
            [
                *_stage_events(Stage.SAVING, f"saving item {item.item_index}"),
                (EventType.ARTIFACT, data),
                log_event(f"stored {key} ({artifact.size_bytes} bytes)", stage=Stage.SAVING),
            ],
            stage=Stage.SAVING.value,
            progress=overall_progress(Stage.SAVING),
        )

    def _record_stage(
        self, job: Job, stage: Stage, message: str, before: list[NewEvent] | None = None
    ) -> None:
        self._events.record(
            job.id,
            [*(before or []), *_stage_events(stage, message)],
            stage=stage.value,
            progress=overall_progress(stage),
        )

    def _tick(self, job: Job, watch: _Watch) -> Tick:
        now = time.monotonic()
        if self._stopping.is_set():
            return Tick.KILL
        if now - watch.started > self._settings.time_limit_s:
            watch.timed_out = True
            return Tick.KILL
        if now - watch.last_heartbeat >= self._settings.heartbeat_s:
            watch.last_heartbeat = now
            if not self._jobs.renew_lease(job.id, self._settings.worker_id, self._settings.lease_s):
                log.warning("job.lease_lost", job_id=job.id)
                return Tick.KILL
        if not watch.cancel_seen:
            watch.cancel_seen = self._notifier.cancel_requested(job.id)
        if not watch.cancel_seen and now - watch.last_cancel_check >= self._settings.cancel_poll_s:
            watch.last_cancel_check = now
            watch.cancel_seen = self._jobs.is_cancel_requested(job.id)
        return Tick.CANCEL if watch.cancel_seen else Tick.CONTINUE

    def _timeout_error(self) -> dict[str, Any]:
        limit = self._settings.time_limit_s
        return _error(ErrorCode.TIMEOUT, f"the job ran past its limit of {limit:g}s")

    def _release(self, job: Job) -> JobStatus | None:
        released = self._events.transition(
            job.id,
            from_statuses=[JobStatus.RUNNING],
            owner=self._settings.worker_id,
            events=[
                log_event(
                    "worker stopping; job returned to the queue", LogLevel.WARNING, stage=job.stage
                ),
                status_event(JobStatus.QUEUED),
            ],
            status=JobStatus.QUEUED.value,
            lease_owner=None,
            lease_expires_at=None,
            stage=Stage.QUEUED.value,
            progress=0.0,
        )
        return JobStatus.QUEUED if released is not None else None

    def _finish(
        self,
        job: Job,
        status: JobStatus,
        error: dict[str, Any] | None,
        before: list[NewEvent] | None = None,
    ) -> JobStatus | None:
        events = list(before or [])
        if error is not None:
            events.append(
                log_event(error["message"], LogLevel.ERROR, stage=job.stage, code=error["code"])
            )
        events += [
            status_event(status),
            (EventType.DONE, {"status": status.value, "error": error}),
        ]
        fields: dict[str, Any] = {
            "status": status.value,
            "error": error,
            "finished_at": utcnow(),
            "lease_owner": None,
            "lease_expires_at": None,
            "stage": Stage.DONE.value,
        }
        if status is JobStatus.SUCCEEDED:
            fields["progress"] = 1.0
        finished = self._events.transition(
            job.id,
            from_statuses=[JobStatus.RUNNING],
            owner=self._settings.worker_id,
            events=events,
            **fields,
        )
        if finished is None:
            log.warning("job.finish_lost", job_id=job.id, status=status)
            return None
        log.info("job.finished", job_id=job.id, status=status)
        return status
