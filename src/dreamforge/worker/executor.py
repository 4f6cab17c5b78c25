"""Runs one job: claim it, render what is not yet rendered, store it, finish it.

Safe to call twice for the same job (a duplicate delivery, a retry after a crash): the
claim is a conditional update, artifact keys are deterministic, and items already stored
are skipped.
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
from dreamforge.store.jobs import JobRepository
from dreamforge.store.records import Artifact, Job
from dreamforge.store.tables import utcnow

log = structlog.get_logger(__name__)

GENERATE_STEP = (0, "generate")


@dataclass
class ExecutorSettings:
    worker_id: str
    lease_s: float
    heartbeat_s: float
    time_limit_s: float
    cancel_poll_s: float = 0.1


@dataclass
class _Watch:
    """What the run loop keeps between ticks."""

    started: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    last_cancel_check: float = 0.0
    cancel_seen: bool = False
    timed_out: bool = False


class JobExecutor:
    def __init__(
        self,
        jobs: JobRepository,
        events: EventLog,
        models: ModelRegistry,
        storage: ArtifactStorage,
        runner: RunnerHost,
        settings: ExecutorSettings,
    ) -> None:
        self._jobs = jobs
        self._events = events
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
        job = self._jobs.claim(
            job_id, owner, self._settings.lease_s, [status_event(JobStatus.RUNNING, worker=owner)]
        )
        if job is None:
            log.info("job.not_claimed", job_id=job_id)
            return None
        self._events.published(job_id)
        attempt = f"attempt {job.attempts}" + (" (retry)" if job.attempts > 1 else "")
        self._events.log(
            job_id, f"started on worker {owner}, {attempt}", stage="claimed", attempt=job.attempts
        )
        try:
            return self._execute(job)
        except Exception as exc:  # the job must end, whatever broke
            log.exception("job.crashed", job_id=job_id)
            return self._finish(
                job, JobStatus.FAILED, {"code": ErrorCode.RUNNER_ERROR.value, "message": str(exc)}
            )

    def _execute(self, job: Job) -> JobStatus | None:
        spec = job.spec
        model = self._models.get(spec.model_id)
        if model is None or model.status != "ready":
            code = ErrorCode.MODEL_NOT_FOUND if model is None else ErrorCode.MODEL_NOT_READY
            return self._finish(
                job,
                JobStatus.FAILED,
                {
                    "code": code.value,
                    "message": f"model {spec.model_id!r} "
                    f"is {'not registered' if model is None else model.status}",
                },
            )
        done = {
            a.item_index
            for a in self._jobs.artifacts(job.id)
            if (a.step_index, a.step_type) == GENERATE_STEP and self._storage.exists(a.key)
        }
        items = tuple(ItemToRender(i, spec.seed + i) for i in range(1) if i not in done)
        if done:
            self._events.log(
                job.id, f"{len(done)} item(s) already stored; skipping them", stage=Stage.DENOISING
            )
        self._stage(job, Stage.LOADING_MODEL, f"loading model {model.id}")
        request = GenerateRequest(
            spec=spec,
            model=ModelRef(model.id, model.path, model.format, model.sha256, model.source),
            items=items,
        )
        watch = _Watch()
        if items:
            try:
                outcome = self._runner.run(
                    request,
                    on_message=lambda message: self._relay(job, message, item_count=1),
                    tick=lambda: self._tick(job, watch),
                )
            except RunnerCrashed as exc:
                if self._stopping.is_set():
                    return self._release(job)
                if watch.timed_out:
                    return self._finish(job, JobStatus.FAILED, self._timeout_error())
                return self._finish(
                    job,
                    JobStatus.FAILED,
                    {"code": ErrorCode.RUNNER_ERROR.value, "message": str(exc)},
                )
            if isinstance(outcome, Failed):
                if outcome.code is ErrorCode.CANCELED:
                    return self._finish(job, JobStatus.CANCELED, None)
                return self._finish(
                    job, JobStatus.FAILED, {"code": outcome.code.value, "message": outcome.message}
                )
        elapsed = time.monotonic() - watch.started
        self._events.log(job.id, f"finished in {elapsed:.2f}s", stage=Stage.DONE)
        return self._finish(job, JobStatus.SUCCEEDED, None)

    def _relay(self, job: Job, message: RunnerMessage, item_count: int) -> None:
        if isinstance(message, ModelLoaded):
            how = "from cache" if message.cached else "from disk"
            self._events.log(
                job.id,
                f"model {message.model_id} ready ({how}, "
                f"{message.seconds:.2f}s) on {message.device}/{message.dtype}",
                stage=Stage.LOADING_MODEL,
                device=message.device,
            )
            self._stage(
                job,
                Stage.DENOISING,
                f"denoising {job.spec.steps} steps, "
                f"{job.spec.width}x{job.spec.height}, seed {job.spec.seed}",
            )
        elif isinstance(message, StepDone):
            fraction = denoising_fraction(
                message.item_index, item_count, message.step, message.steps
            )
            progress = overall_progress(Stage.DENOISING, fraction)
            self._events.record(
                job.id,
                [
                    (
                        EventType.PROGRESS,
                        {
                            "progress": progress,
                            "stage": Stage.DENOISING.value,
                            "item_index": message.item_index,
                            "step": message.step,
                            "steps": message.steps,
                        },
                    )
                ],
                progress=progress,
            )
        elif isinstance(message, ItemRendered):
            self._store(job, message)

    def _store(self, job: Job, item: ItemRendered) -> None:
        step_index, step_type = GENERATE_STEP
        key = artifact_key(job.id, step_index, step_type, item.item_index)
        self._stage(job, Stage.SAVING, f"saving {key}")
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
        self._jobs.save_artifact(
            artifact,
            [
                (EventType.ARTIFACT, data),
                log_event(f"stored {key} ({artifact.size_bytes} bytes)", stage=Stage.SAVING),
            ],
        )
        self._events.published(job.id)

    def _stage(self, job: Job, stage: Stage, message: str) -> None:
        progress = overall_progress(stage)
        self._events.record(
            job.id,
            [
                (EventType.STAGE, {"stage": stage.value, "progress": progress}),
                log_event(message, stage=stage),
            ],
            stage=stage.value,
            progress=progress,
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
        if not watch.cancel_seen and now - watch.last_cancel_check >= self._settings.cancel_poll_s:
            watch.last_cancel_check = now
            watch.cancel_seen = self._jobs.is_cancel_requested(job.id)
        return Tick.CANCEL if watch.cancel_seen else Tick.CONTINUE

    def _timeout_error(self) -> dict[str, Any]:
        return {
            "code": ErrorCode.TIMEOUT.value,
            "message": f"the job ran past its limit of {self._settings.time_limit_s:g}s",
        }

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
        self, job: Job, status: JobStatus, error: dict[str, Any] | None
    ) -> JobStatus | None:
        events = []
        if error is not None:
            events.append(
                log_event(error["message"], LogLevel.ERROR, stage=job.stage, code=error["code"])
            )
        events += [status_event(status), (EventType.DONE, {"status": status.value, "error": error})]
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
