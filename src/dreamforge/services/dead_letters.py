"""The dead-letter queue: jobs that failed after their transient failures used up every
attempt. An operator lists them, sends one back for another attempt, or purges them (they
stay failed, out of the queue)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import Conflict
from dreamforge.domain.events import LogLevel, log_event, status_event
from dreamforge.domain.jobs import REVIVE, JobStatus
from dreamforge.domain.progress import Stage
from dreamforge.domain.records import Job
from dreamforge.events.writer import JobWriter
from dreamforge.store.jobs import JobRepository

log = structlog.get_logger(__name__)


class DeadLetterQueue:
    def __init__(
        self, jobs: JobRepository, writer: JobWriter, enqueue: Callable[[str], None]
    ) -> None:
        self._jobs = jobs
        self._writer = writer
        self._enqueue = enqueue

    def list(self, limit: int = 100) -> list[Job]:
        return self._jobs.dead_letters(limit)

    def retry(self, job_id: str) -> Job:
        """Send a dead-lettered job back to the queue for one more attempt; its stored
        images are kept, so it renders only what is missing. ``Conflict`` if the job is
        not in the dead-letter queue."""
        job = self._jobs.require(job_id)
        revived = self._writer.transition(
            job_id,
            REVIVE,
            [
                log_event(
                    f"sent back from the dead-letter queue after {job.attempts} attempt(s)",
                    LogLevel.WARNING,
                    Stage.QUEUED,
                ),
                status_event(JobStatus.QUEUED),
            ],
            dead_lettered=True,
            finished_at=None,
            dead_lettered_at=None,
            stage=Stage.QUEUED.value,
            progress=0.0,
            enqueued_at=utcnow(),
        )
        if revived is None:
            raise Conflict(f"job {job_id!r} is not in the dead-letter queue")
        log.warning("dlq.retried", job_id=job_id)
        try:
            self._enqueue(job_id)
        except Exception:  # queued in the database: the reaper sends it once the broker is back
            log.warning("dlq.enqueue_failed", job_id=job_id, exc_info=True)
        return self._jobs.require(job_id)

    def purge(self, job_ids: Sequence[str] | None = None) -> int:
        """Take jobs (all, when ``None``) out of the queue; they stay failed."""
        purged = self._jobs.purge_dead_letters(job_ids)
        log.warning("dlq.purged", jobs=purged)
        return purged
