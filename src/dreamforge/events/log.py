"""Writing job events: append to the durable log, then wake whoever follows the job."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from dreamforge.domain.events import EventType, LogLevel
from dreamforge.domain.jobs import JobStatus
from dreamforge.events.notifier import Notifier
from dreamforge.store.jobs import JobRepository, NewEvent
from dreamforge.store.records import JobEvent


def log_event(
    message: str, level: LogLevel = LogLevel.INFO, stage: str | None = None, **fields: Any
) -> NewEvent:
    return EventType.LOG, {"level": level.value, "message": message, "stage": stage, **fields}


def status_event(status: JobStatus, **fields: Any) -> NewEvent:
    return EventType.STATUS, {"status": status.value, **fields}


class EventLog:
    def __init__(self, jobs: JobRepository, notifier: Notifier) -> None:
        self._jobs = jobs
        self._notifier = notifier

    def record(self, job_id: str, events: Sequence[NewEvent], **fields: Any) -> list[JobEvent]:
        appended = self._jobs.record(job_id, events, **fields)
        self._notifier.publish(job_id)
        return appended

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
        if appended is not None:
            self._notifier.publish(job_id)
        return appended

    def log(
        self,
        job_id: str,
        message: str,
        level: LogLevel = LogLevel.INFO,
        stage: str | None = None,
        **fields: Any,
    ) -> None:
        self.record(job_id, [log_event(message, level, stage, **fields)])

    def published(self, job_id: str) -> None:
        """Wake followers after events written elsewhere (e.g. with an artifact row)."""
        self._notifier.publish(job_id)
