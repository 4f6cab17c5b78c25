"""Changing a job: write the change and its events in one transaction, then publish them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog

from dreamforge.domain.access import DEFAULT_TENANT
from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import JobError
from dreamforge.domain.events import (
    EventData,
    EventType,
    JobEvent,
    ProgressData,
    log_event,
    status_event,
)
from dreamforge.domain.jobs import JobSpec, JobStatus, Transition, finish
from dreamforge.domain.progress import Stage
from dreamforge.domain.records import Artifact, IdempotencyKey, Job
from dreamforge.events.notifier import Notifier
from dreamforge.metrics import JOBS_FINISHED
from dreamforge.store.jobs import JobRepository

log = structlog.get_logger(__name__)


class JobWriter:
    """The one way a job's state changes: every write goes with the events that describe
    it, and followers hear of them at once."""

    def __init__(
        self,
        jobs: JobRepository,
        notifier: Notifier,
        on_done: Callable[[str], None] | None = None,
    ) -> None:
        self._jobs = jobs
        self._notifier = notifier
        self._on_done = on_done  # told of every job that ends (webhooks)

    def _published(self, job_id: str, appended: list[JobEvent] | None) -> list[JobEvent] | None:
        if appended:
            self._notifier.publish(job_id, appended)
            if appended[-1].type is not EventType.DONE:
                return appended
            # Every ending says so with a done event, whichever path ended the job (the
            # worker, the reaper, a cancel before it started): count it here, once.
            done = appended[-1].data
            code = (done.get("error") or {}).get("code", "")
            JOBS_FINISHED.labels(done["status"], code).inc()
            if self._on_done is not None:
                try:
                    self._on_done(job_id)
                except Exception:  # the job has ended all the same; say so and go on
                    log.warning("job.on_done_failed", job_id=job_id, exc_info=True)
        return appended

    def create(
        self,
        job_id: str,
        spec: JobSpec,
        events: Sequence[EventData],
        idempotency: IdempotencyKey | None = None,
        keys_expire_before: datetime | None = None,
        tenant: str = DEFAULT_TENANT,
        webhook_url: str | None = None,
    ) -> Job:
        # Nobody can follow a job before its id is returned: nothing to publish yet.
        return self._jobs.create(
            job_id, spec, events, idempotency, keys_expire_before, tenant, webhook_url
        )

    def claim(
        self,
        job_id: str,
        owner: str,
        lease_s: float,
        running_limit: tuple[str, int] | None = None,
    ) -> Job | None:
        started = [status_event(JobStatus.RUNNING, owner)]
        claimed = self._jobs.claim(job_id, owner, lease_s, started, running_limit)
        if claimed is None:
            return None
        job, appended = claimed
        self._published(job_id, appended)
        return job

    def record(self, job_id: str, events: Sequence[EventData], **fields: Any) -> list[JobEvent]:
        return self._published(job_id, self._jobs.record(job_id, events, **fields)) or []

    def transition(
        self,
        job_id: str,
        move: Transition,
        events: Sequence[EventData],
        *,
        owner: str | None = None,
        error: JobError | None = None,
        **fields: Any,
    ) -> list[JobEvent] | None:
        appended = self._jobs.transition(job_id, move, events, owner=owner, error=error, **fields)
        return self._published(job_id, appended)

    def end(
        self,
        job_id: str,
        status: JobStatus,
        events: Sequence[EventData],
        *,
        owner: str | None,
        error: JobError | None = None,
        dead_lettered: bool = False,
        **fields: Any,
    ) -> list[JobEvent] | None:
        """``running → status`` for the lease ``owner`` holds (the worker's, or a lost
        worker's for the reaper): finished now, lease let go."""
        now = utcnow()
        return self.transition(
            job_id,
            finish(status),
            events,
            owner=owner,
            error=error,
            finished_at=now,
            dead_lettered_at=now if dead_lettered else None,
            lease_owner=None,
            lease_expires_at=None,
            stage=Stage.DONE.value,
            **fields,
        )

    def save_artifact(
        self, artifact: Artifact, events: Sequence[EventData], **fields: Any
    ) -> list[JobEvent]:
        appended = self._jobs.save_artifact(artifact, events, **fields)
        return self._published(artifact.job_id, appended) or []

    def progress(self, job_id: str, data: ProgressData, persist: bool) -> None:
        """Tell followers at once; write the figure to the job only when ``persist``."""
        self._notifier.publish(job_id, [JobEvent.live(job_id, data, utcnow())])
        if persist:
            self._jobs.set_progress(job_id, data.progress)

    def request_cancel(self, job_id: str, stage: str) -> None:
        """Flag the job in the database, then signal whichever worker runs it."""
        self.record(job_id, [log_event("cancel requested", stage=stage)], cancel_requested=True)
        self._notifier.publish_cancel(job_id)
