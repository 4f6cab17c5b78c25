"""Finds jobs that no worker holds any more and puts them back in the queue.

Two kinds get lost: a running job whose worker died (its lease runs out), and a queued
job whose message the broker dropped (a Redis restart without persistence, say). Both go
back to the broker; a job sent twice is harmless, because only one claim can succeed. A
job whose workers keep dying (one that crashes whatever runs it, say) is not sent forever:
once its attempts are used up it fails with ``WORKER_LOST`` into the dead-letter queue.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import ErrorCode, JobError
from dreamforge.domain.events import LogLevel, failure_events, log_event, status_event
from dreamforge.domain.jobs import REQUEUE, JobStatus
from dreamforge.domain.progress import Stage
from dreamforge.domain.records import Job
from dreamforge.domain.retries import RetryPolicy, Verdict
from dreamforge.events.writer import JobWriter
from dreamforge.store.jobs import JobRepository

log = structlog.get_logger(__name__)


class Reaper:
    def __init__(
        self,
        jobs: JobRepository,
        writer: JobWriter,
        enqueue: Callable[[str], None],
        pending_job_ids: Callable[[], set[str] | None],
        retries: RetryPolicy | None = None,
    ) -> None:
        self._jobs = jobs
        self._writer = writer
        self._enqueue = enqueue
        self._pending_job_ids = pending_job_ids
        self._retries = retries or RetryPolicy()

    def requeue_orphans(self, expired_before: datetime | None) -> list[str]:
        """Running jobs whose lease ran out go back to ``queued`` (all of them if ``None``),
        or fail into the dead-letter queue when that was their last attempt."""
        requeued = []
        for job in self._jobs.orphaned(expired_before):
            if self._retries.verdict(ErrorCode.WORKER_LOST, job.attempts) is not Verdict.RETRY:
                self._give_up(job)
                continue
            moved = self._writer.transition(
                job.id,
                REQUEUE,
                [
                    log_event(
                        f"worker {job.lease_owner} was lost during attempt {job.attempts}; "
                        "job requeued",
                        LogLevel.WARNING,
                        stage=job.stage,
                    ),
                    status_event(JobStatus.QUEUED),
                ],
                owner=job.lease_owner,
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

    def _give_up(self, job: Job) -> None:
        error = JobError(
            code=ErrorCode.WORKER_LOST,
            message=f"worker {job.lease_owner} was lost during attempt {job.attempts}",
        )
        failed = self._writer.end(
            job.id,
            JobStatus.FAILED,
            failure_events(error, job.stage, job.attempts, dead_lettered=True),
            owner=job.lease_owner,
            error=error,
            dead_lettered=True,
        )
        if failed is not None:
            log.error("reaper.dead_lettered", job_id=job.id, attempts=job.attempts)

    def send_queued(self, enqueued_before: datetime | None = None) -> int:
        """Send queued jobs to the broker again: all, or those last sent before a time."""
        return self.send(self._jobs.queued_ids(enqueued_before))

    def send(self, ids: list[str]) -> int:
        """Hand jobs to the broker, oldest first, until it fails; how many went."""
        sent = []
        for job_id in ids:
            try:
                self._enqueue(job_id)
            except Exception:  # the broker is down: the next sweep tries again
                log.warning("reaper.enqueue_failed", job_id=job_id, exc_info=True)
                break
            sent.append(job_id)
        self._jobs.mark_enqueued(sent)
        return len(sent)

    def sweep(self, requeue_after_s: float) -> None:
        """One pass: expired leases back to the queue, then re-send what looks lost."""
        now = utcnow()
        # A job taken back from a lost worker goes out at once, not after requeue_after_s.
        self.send(self.requeue_orphans(expired_before=now))
        stale = self._jobs.queued_ids(now - timedelta(seconds=requeue_after_s))
        if not stale:
            return
        # A job waiting behind others is not lost: only one the broker holds no message
        # for is sent again (a Redis restart without persistence, say).
        held = self._pending_job_ids()
        lost = [job_id for job_id in stale if held is not None and job_id not in held]
        if sent := self.send(lost):
            log.warning("reaper.resent", jobs=sent)
