"""Writing job events: append to the durable log, then wake whoever follows the job."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dreamforge.domain.events import EventType, LogLevel
from dreamforge.domain.jobs import JobSpec, JobStatus
from dreamforge.events.notifier import Notifier
from dreamforge.store.jobs import JobRepository, NewEvent
from dreamforge.store.records import Artifact, Job, JobEvent


def log_event(
    message: str, level: LogLevel = LogLevel.INFO, stage: str | None = None, **fields: Any
) -> NewEvent:
    return EventType.LOG, {"level": level.value, "message": message, "stage": stage, **fields}


def status_event(status: JobStatus, **fields: Any) -> NewEvent:
    return EventType.STATUS, {"status": status.value, **fields}


class EventLog:
    """The one way job state changes: write the change and its events, then publish them."""

    def __init__(self, jobs: JobRepository, notifier: Notifier) -> None:
        self._jobs = jobs
        self._notifier = notifier

    def _published(self, job_id: str, appended: list[JobEvent] | None) -> list[JobEvent] | None:
        if appended:
            self._notifier.publish(job_id, appended)
        return appended

    def create(self, job_id: str, spec: JobSpec, events: Sequence[NewEvent]) -> Job:
        # Nobody can follow a job before its id is returned: nothing to publish yet.
        return self._jobs.create(job_id, spec, events)

    def claim(self, job_id: str, owner: str, lease_s: float) -> Job | None:
        claimed = self._jobs.claim(
            job_id, owner, lease_s, [status_event(JobStatus.RUNNING, worker=owner)]
        )
        if claimed is None:
            return None
        job, appended = claimed
        self._published(job_id, appended)
        return job

    def record(self, job_id: str, events: Sequence[NewEvent], **fields: Any) -> list[JobEvent]:
        return self._published(job_id, self._jobs.record(job_id, events, **fields)) or []

    def transition(
        self,
        job_id: str,
        *,
        from_statuses: Iterable[JobStatus],
        events: Sequence[NewEvent],
        owner: str | None = None,
        **fields: Any,
    ) -> list[JobEvent] | None:
        appended = self._jobs.transition(
            job_id, from_statuses=from_statuses, events=events, owner=owner, **fields
        )
        return self._published(job_id, appended)

    def save_artifact(
        self, artifact: Artifact, events: Sequence[NewEvent], **fields: Any
    ) -> list[JobEvent]:
        appended = self._jobs.save_artifact(artifact, events, **fields)
        return self._published(artifact.job_id, appended) or []

    def request_cancel(self, job_id: str, stage: str) -> None:
        """Flag the job in the database, then signal whichever worker runs it."""
        self.record(job_id, [log_event("cancel requested", stage=stage)], cancel_requested=True)
        self._notifier.publish_cancel(job_id)
