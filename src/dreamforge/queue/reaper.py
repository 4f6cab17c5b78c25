"""Finds jobs that no worker holds any more and puts them back in the queue."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from dreamforge.domain.events import LogLevel
from dreamforge.domain.jobs import JobStatus
from dreamforge.domain.progress import Stage
from dreamforge.events.log import EventLog, log_event, status_event
from dreamforge.store.jobs import JobRepository

log = structlog.get_logger(__name__)


class Reaper:
    def __init__(
        self, jobs: JobRepository, events: EventLog, enqueue: Callable[[str], None]
    ) -> None:
        self._jobs = jobs
        self._events = events
        self._enqueue = enqueue

    def requeue_orphans(self, expired_before: datetime | None) -> list[str]:
        """Running jobs whose lease ran out go back to ``queued``; all of them if ``None``."""
        requeued = []
        for job in self._jobs.orphaned(expired_before):
            moved = self._events.transition(
                job.id,
                from_statuses=[JobStatus.RUNNING],
                owner=job.lease_owner,
                events=[
                    log_event(
                        f"worker {job.lease_owner} was lost during attempt "
                        f"{job.attempts}; job requeued",
                        LogLevel.WARNING,
                        stage=job.stage,
                    ),
                    status_event(JobStatus.QUEUED),
                ],
                status=JobStatus.QUEUED.value,
                lease_owner=None,
                lease_expires_at=None,
                stage=Stage.QUEUED.value,
                progress=0.0,
            )
            if moved is not None:
                requeued.append(job.id)
        if requeued:
            log.warning("reaper.requeued", jobs=requeued)
        return requeued

    def enqueue_queued(self) -> int:
        """Send every queued job to the broker again; duplicates are harmless (see claim)."""
        ids = self._jobs.queued_ids()
        for job_id in ids:
            self._enqueue(job_id)
        return len(ids)
