"""Holds one job from claim to end: the lease, its heartbeat, cancel, the time limit, and
the final transition. What the job renders is the step driver's business.

A failed attempt ends as the retry policy says: a transient failure (storage, database,
a crashed pipeline process) sends the job back to the queue after a backoff, until its
attempts run out and it fails into the dead-letter queue; a permanent one fails it now.

Safe to call twice for the same job (a duplicate delivery, a retry after a crash): the
claim is a conditional update, so only one call gets past it, and every later move is
conditional on this worker still holding the lease. Every move is one the domain's state
machine allows; the store refuses any other.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import structlog
from sqlalchemy.exc import DBAPIError

from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import ErrorCode, JobError
from dreamforge.domain.events import (
    DoneData,
    EventData,
    LogLevel,
    failure_events,
    log_event,
    status_event,
)
from dreamforge.domain.jobs import REQUEUE, JobStatus
from dreamforge.domain.progress import Stage
from dreamforge.domain.records import Job
from dreamforge.domain.retries import RetryPolicy, Verdict
from dreamforge.events.notifier import Notifier
from dreamforge.events.writer import JobWriter
from dreamforge.logs import bound_job
from dreamforge.metrics import JOBS_RETRIED, STAGE_SECONDS
from dreamforge.runners.protocol import RunnerCrashed, Tick
from dreamforge.store.jobs import JobRepository
from dreamforge.worker.hygiene import DeviceHygiene
from dreamforge.worker.steps import JobOutcome, StepDriver, StorageFailed

logger = structlog.get_logger(__name__)

# The stage of a queued job held back by its tenant's running-jobs quota.
QUOTA_WAIT = "quota_wait"


@dataclass(frozen=True)
class LeaseSettings:
    worker_id: str
    lease_s: float
    heartbeat_s: float
    time_limit_s: float
    # Cancel requests arrive through the notifier at once; the database is only re-read
    # this often, in case a signal was lost.
    cancel_poll_s: float = 1.0


@dataclass
class _Watch:
    """What the lifecycle keeps between ticks of one job."""

    started: float = field(default_factory=time.monotonic)
    last_heartbeat: float = field(default_factory=time.monotonic)
    last_cancel_check: float = field(default_factory=time.monotonic)
    cancel_seen: bool = False
    timed_out: bool = False
    lease_lost: bool = False


class JobLifecycle:
    def __init__(
        self,
        jobs: JobRepository,
        writer: JobWriter,
        notifier: Notifier,
        driver: StepDriver,
        settings: LeaseSettings,
        enqueue: Callable[[str, float], None],
        retries: RetryPolicy | None = None,
        jitter: Callable[[], float] = random.random,
        device_tolerance_bytes: int = 128 * 2**20,
        running_quota: Callable[[str], int] | None = None,
        quota_wait_s: float = 2.0,
        batch_window_s: float | None = None,
    ) -> None:
        self._jobs = jobs
        self._writer = writer
        self._notifier = notifier
        self._driver = driver
        self._settings = settings
        self._enqueue = enqueue
        self._retries = retries or RetryPolicy()
        self._jitter = jitter
        self._hygiene = DeviceHygiene(driver.runner, device_tolerance_bytes)
        # None when no tenant's running jobs are limited: a claim then needs no read first.
        self._running_quota = running_quota
        self._quota_wait_s = quota_wait_s
        # None: every job renders on its own; else how long to wait for batch companions.
        self._batch_window_s = batch_window_s
        self._stopping = threading.Event()
        # A cancel's signal wakes the runner, whose next tick finds it: the job stops at
        # the step under way, not at the step after the runner's next message.
        notifier.on_cancel(lambda _job_id: driver.runner.wake())

    def stop(self) -> None:
        """Hand the job in hand back to the queue instead of finishing it (shutdown)."""
        self._stopping.set()
        self._driver.runner.wake()

    def run(self, job_id: str) -> JobStatus | None:
        """Run the job if it can be claimed; its final status, or ``None`` if not ours."""
        owner = self._settings.worker_id
        limit = self._running_limit(job_id)
        job = self._writer.claim(job_id, owner, self._settings.lease_s, limit)
        if job is None:
            if limit is not None:
                return self._wait_for_room(job_id, limit)
            self._not_claimed(job_id, self._jobs.get(job_id))
            return None
        if job.started_at is not None:
            STAGE_SECONDS.labels("queue_wait").observe(
                (job.started_at - job.created_at).total_seconds()
            )
        with bound_job(job.id, job.tenant):
            companions = self._companions(job)
            if companions:
                return self._hold_together([job, *companions], owner)
            return self._hold(job, owner)

    def _not_claimed(self, job_id: str, job: Job | None) -> None:
        """Say why a job's message found nothing to claim: a job that a worker took into
        another's batch still gets its own message afterwards (expected), as does one
        delivered twice (a wasted delivery); the status tells them apart from a lost job."""
        if job is None:
            logger.warning("job.unknown", job_id=job_id)
        else:
            logger.info("job.already_taken", job_id=job_id, status=job.status.value)

    def _companions(self, job: Job) -> list[Job]:
        """Queued jobs to denoise with ``job`` in one device batch, claimed for this
        worker: of its shape, never run before, oldest first, as many items as the
        device batch holds. None when batching is off or the job cannot share.

        A batch that is not full waits for companions until the window has passed since
        the job was queued: a burst's first job gathers the jobs sent with it, while a
        job that queued behind others (its companions queued with it), or a full batch,
        starts at once."""
        room = self._driver.max_batch - job.spec.count
        if self._batch_window_s is None or job.attempts > 1 or room <= 0:
            return []
        if not job.spec.shareable:
            return []
        queued_s = (job.started_at - job.created_at).total_seconds() if job.started_at else 0.0
        # Clamped: the API's and the worker's clocks may differ (distributed profile).
        wait_s = min(self._batch_window_s, max(0.0, self._batch_window_s - queued_s))
        deadline = time.monotonic() + wait_s
        poll_s = max(0.01, self._batch_window_s / 10)  # a few reads of the queue a window
        claimed: list[Job] = []
        while True:
            more = self._claim_companions(job, room)
            room -= sum(other.spec.count for other in more)
            claimed += more
            left = deadline - time.monotonic()
            if room <= 0 or left <= 0:
                return claimed
            time.sleep(min(left, poll_s))

    def _claim_companions(self, job: Job, room: int) -> list[Job]:
        """Claim queued jobs that batch with ``job``, up to ``room`` items, oldest first."""
        claimed: list[Job] = []
        for other in self._jobs.never_run(limit=50, skip=job.id):
            if other.spec.count > room or not job.spec.batches_with(other.spec):
                continue
            limit = self._running_limit(other.id)
            taken = self._writer.claim(
                other.id, self._settings.worker_id, self._settings.lease_s, limit
            )
            if taken is not None:
                claimed.append(taken)
                room -= taken.spec.count
        return claimed

    def _running_limit(self, job_id: str) -> tuple[str, int] | None:
        """The job's tenant and how many of its jobs may run, if that is limited."""
        if self._running_quota is None:
            return None
        queued = self._jobs.get(job_id)
        if queued is None or queued.status is not JobStatus.QUEUED:
            return None  # nothing to claim; the claim says so
        most = self._running_quota(queued.tenant)
        return (queued.tenant, most) if most else None

    def _wait_for_room(self, job_id: str, limit: tuple[str, int]) -> JobStatus | None:
        """Not claimed: if the job is still queued, its tenant has as many jobs running as
        it may, so it goes back to the broker to try again shortly. Said once in its log;
        its due time moves on, so the reaper does not take it for lost."""
        job = self._jobs.get(job_id)
        if job is None or job.status is not JobStatus.QUEUED:
            self._not_claimed(job_id, job)
            return None
        tenant, most = limit
        waited = job.stage == QUOTA_WAIT
        said = (
            []
            if waited
            else [
                log_event(
                    f"waiting: tenant {tenant} has {most} job(s) running, the most allowed at once",
                    stage=QUOTA_WAIT,
                )
            ]
        )
        due = utcnow() + timedelta(seconds=self._quota_wait_s)
        self._writer.record(job_id, said, stage=QUOTA_WAIT, enqueued_at=due)
        try:
            self._enqueue(job_id, self._quota_wait_s)
        except Exception:  # the broker is down or going away: the reaper sends it later
            logger.warning("job.resend_failed", job_id=job_id, exc_info=True)
        logger.info("job.quota_wait", job_id=job_id, tenant=tenant, running_limit=most)
        return JobStatus.QUEUED

    def _hold(self, job: Job, owner: str) -> JobStatus | None:
        """From the claim to the end: render, then finish, retry or hand back."""
        job_id = job.id
        retry = " (retry)" if job.attempts > 1 else ""
        started = log_event(
            f"started on worker {owner}, attempt {job.attempts}{retry}",
            stage="claimed",
            attempt=job.attempts,
        )
        watch = _Watch()
        outcome: JobOutcome | None
        try:
            outcome = self._driver.drive(job, lambda: self._tick(job, watch), notes=[started])
        except RunnerCrashed as exc:
            outcome = self._after_crash(job, watch, exc)
        except Exception as exc:  # the job must end, whatever broke
            logger.exception("job.crashed", job_id=job_id)
            outcome = JobOutcome.failed(_code_of(exc), f"{type(exc).__name__}: {exc}")
        finally:
            self._notifier.forget_cancel(job_id)
        if outcome is None:
            return self._requeue(job) if self._stopping.is_set() else None
        notes = self._hygiene.check(job.id, job.stage)
        elapsed_s = time.monotonic() - watch.started
        STAGE_SECONDS.labels("job").observe(elapsed_s)
        return self._finish(job, outcome, elapsed_s, notes)

    def _hold_together(self, jobs: list[Job], owner: str) -> JobStatus | None:
        """``_hold`` for jobs denoised in one batch: each with its own lease, cancel,
        time limit and end; the leader's status."""
        watches = {job.id: _Watch() for job in jobs}
        by_id = {job.id: job for job in jobs}
        ended: dict[str, JobStatus | None] = {}
        others = len(jobs) - 1
        notes = {
            job.id: [
                log_event(
                    f"started on worker {owner}, attempt {job.attempts}, in one device batch "
                    f"with {others} other job(s) of the same shape",
                    stage="claimed",
                    attempt=job.attempts,
                )
            ]
            for job in jobs
        }

        def end(job_id: str, outcome: JobOutcome | None) -> None:
            job, watch = by_id[job_id], watches[job_id]
            with bound_job(job.id, job.tenant):
                if outcome is None and watch.timed_out:  # killed: by its time limit
                    outcome = self._timed_out(job)
                if outcome is None:
                    ended[job_id] = self._requeue(job) if self._stopping.is_set() else None
                    return
                elapsed_s = time.monotonic() - watch.started
                STAGE_SECONDS.labels("job").observe(elapsed_s)
                ended[job_id] = self._finish(job, outcome, elapsed_s)

        ticks = {job.id: (lambda job=job: self._tick(job, watches[job.id])) for job in jobs}
        outcomes: dict[str, JobOutcome | None]
        try:
            outcomes = self._driver.drive_together(jobs, ticks, notes, end)
        except RunnerCrashed as exc:
            outcomes = {
                job.id: self._after_crash(job, watches[job.id], exc)
                for job in jobs
                if job.id not in ended
            }
        except Exception as exc:  # every job must end, whatever broke
            logger.exception("job.crashed", job_id=jobs[0].id)
            failed = JobOutcome.failed(_code_of(exc), f"{type(exc).__name__}: {exc}")
            outcomes = {job.id: failed for job in jobs if job.id not in ended}
        finally:
            for job in jobs:
                self._notifier.forget_cancel(job.id)
        self._hygiene.check(jobs[0].id, jobs[0].stage)
        for job_id, outcome in outcomes.items():
            if outcome is None:
                ended[job_id] = self._requeue(by_id[job_id]) if self._stopping.is_set() else None
            else:
                end(job_id, outcome)
        return ended.get(jobs[0].id)

    def _after_crash(self, job: Job, watch: _Watch, exc: RunnerCrashed) -> JobOutcome | None:
        """The outcome of a runner that died or was killed; ``None`` when the job is not
        this worker's to end (shutting down, or the lease went to another worker)."""
        if self._stopping.is_set() or watch.lease_lost:
            return None
        if watch.timed_out:
            return self._timed_out(job)
        return JobOutcome.failed(ErrorCode.RUNNER_CRASHED, str(exc))

    def _timed_out(self, job: Job) -> JobOutcome:
        limit = self._limit(job)
        return JobOutcome.failed(ErrorCode.TIMEOUT, f"the job ran past its limit of {limit:g}s")

    def _tick(self, job: Job, watch: _Watch) -> Tick:
        now = time.monotonic()
        if self._stopping.is_set():
            return Tick.KILL
        if now - watch.started > self._limit(job):
            watch.timed_out = True
            return Tick.KILL
        if now - watch.last_heartbeat >= self._settings.heartbeat_s:
            watch.last_heartbeat = now
            if not self._jobs.renew_lease(job.id, self._settings.worker_id, self._settings.lease_s):
                logger.warning("job.lease_lost", job_id=job.id)
                watch.lease_lost = True
                return Tick.KILL
        if not watch.cancel_seen:
            watch.cancel_seen = self._notifier.cancel_requested(job.id)
        if not watch.cancel_seen and now - watch.last_cancel_check >= self._settings.cancel_poll_s:
            watch.last_cancel_check = now
            watch.cancel_seen = self._jobs.is_cancel_requested(job.id)
        return Tick.CANCEL if watch.cancel_seen else Tick.CONTINUE

    def _limit(self, job: Job) -> float:
        return job.spec.time_limit_s or self._settings.time_limit_s

    def _requeue(self, job: Job) -> JobStatus | None:
        """Hand the job back (this worker is stopping) and send it again at once, so that
        another worker takes it now rather than when the reaper notices."""
        said = log_event("worker stopping; job returned to the queue", LogLevel.WARNING, job.stage)
        return self._release(job, [said], delay_s=0.0)

    def _retry(
        self, job: Job, error: JobError, notes: Sequence[EventData] = ()
    ) -> JobStatus | None:
        """Back to the queue after a transient failure, to be sent again after a backoff."""
        delay_s = self._retries.delay_s(job.attempts, self._jitter())
        message = (
            f"attempt {job.attempts} failed ({error.code}: {error.message}); retrying in "
            f"{delay_s:.1f}s, attempt {job.attempts + 1} of {self._retries.max_attempts}"
        )
        logger.warning("job.retrying", job_id=job.id, code=error.code, delay_s=delay_s)
        JOBS_RETRIED.labels(error.code.value).inc()
        said = log_event(message, LogLevel.WARNING, job.stage, code=error.code)
        return self._release(job, [*notes, said], delay_s)

    def _release(self, job: Job, said: Sequence[EventData], delay_s: float) -> JobStatus | None:
        """``running → queued``, then to the broker, to be taken after ``delay_s``."""
        released = self._writer.transition(
            job.id,
            REQUEUE,
            [*said, status_event(JobStatus.QUEUED)],
            owner=self._settings.worker_id,
            lease_owner=None,
            lease_expires_at=None,
            stage=Stage.QUEUED.value,
            progress=0.0,
            # The reaper counts a queued job as lost from when it is due, not from now.
            enqueued_at=utcnow() + timedelta(seconds=delay_s),
        )
        if released is None:
            return None
        try:
            self._enqueue(job.id, delay_s)
        except Exception:  # the broker is down or going away: the reaper sends it later
            logger.warning("job.resend_failed", job_id=job.id, exc_info=True)
        return JobStatus.QUEUED

    def _finish(
        self, job: Job, outcome: JobOutcome, elapsed_s: float, notes: Sequence[EventData] = ()
    ) -> JobStatus | None:
        events: list[EventData] = [*notes]
        error: JobError | None = outcome.error
        dead_lettered = False
        if error is not None:
            verdict = self._retries.verdict(error.code, job.attempts)
            if verdict is Verdict.RETRY:
                return self._retry(job, error, notes)
            dead_lettered = verdict is Verdict.DEAD_LETTER
            events += failure_events(error, job.stage, job.attempts, dead_lettered)
        else:
            if outcome.status is JobStatus.SUCCEEDED:
                events.append(log_event(f"finished in {elapsed_s:.2f}s", stage=Stage.DONE))
            events += [status_event(outcome.status), DoneData(status=outcome.status, error=None)]
        progress = {"progress": 1.0} if outcome.status is JobStatus.SUCCEEDED else {}
        finished = self._writer.end(
            job.id,
            outcome.status,
            events,
            owner=self._settings.worker_id,
            error=error,
            dead_lettered=dead_lettered,
            **progress,
        )
        if finished is None:
            logger.warning("job.finish_lost", job_id=job.id, status=outcome.status)
            return None
        logger.info("job.finished", job_id=job.id, status=outcome.status)
        return outcome.status


def _code_of(exc: Exception) -> ErrorCode:
    """The code of a failure the runner did not report: which service let the job down."""
    if isinstance(exc, StorageFailed):
        return ErrorCode.STORAGE_ERROR
    if isinstance(exc, DBAPIError):
        return ErrorCode.UNAVAILABLE
    return ErrorCode.RUNNER_ERROR
