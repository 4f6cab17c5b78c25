"""Reading a job's events: the replay-then-tail stream behind SSE, and its log lines."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import datetime

from dreamforge.domain.access import visible_to
from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import FieldProblem, InvalidRequest, NotFound
from dreamforge.domain.events import EventType, JobEvent, ProgressData
from dreamforge.domain.jobs import JobStatus
from dreamforge.domain.records import Job
from dreamforge.events.notifier import Notifier, Subscription
from dreamforge.store.jobs import JobRepository

# A stream re-reads the log when nothing arrived for this long, as a safety net: the
# notifier carries events at once, but a missed publish must cost a delay, not an event.
POLL_S = 2.0


class JobStream:
    """A job's durable events after the one a client resumes from, in order and each once,
    then its live ones, until ``done``, in batches of what is at hand; it ends at once when
    the job has ended and nothing is left. After the replay, a running job's stream gets
    one ``progress`` event with where the job is now (progress is live only: it has no
    ``seq`` and is never replayed).

    ``close`` lets go of its subscription, whether or not it was ever iterated."""

    def __init__(self, batches: AsyncIterator[list[JobEvent]], subscription: Subscription) -> None:
        self._batches = batches
        self._subscription = subscription

    def __aiter__(self) -> AsyncIterator[list[JobEvent]]:
        return self._batches

    def close(self) -> None:
        self._subscription.close()


class JobEvents:
    def __init__(self, jobs: JobRepository, notifier: Notifier, poll_s: float = POLL_S) -> None:
        self._jobs = jobs
        self._notifier = notifier
        self._poll_s = poll_s

    def job(self, job_id: str, tenant: str | None = None) -> Job:
        return self._jobs.require(job_id, tenant)

    def log_lines(
        self,
        job_id: str,
        tenant: str,
        after: int = 0,
        since: datetime | None = None,
        tail: int | None = None,
    ) -> list[JobEvent]:
        self.job(job_id, tenant)
        lines = self._jobs.events(job_id, after, types=[EventType.LOG], since=since)
        return lines[-tail:] if tail is not None else lines

    async def open(
        self, job_id: str, after: int, field: str = "after", tenant: str | None = None
    ) -> JobStream:
        """The job's stream after event ``after`` (see ``JobStream``), from one read of the
        log. Raises before anything is streamed: ``NotFound`` if there is no such job (or
        it is not ``tenant``'s), ``InvalidRequest`` if ``after`` (given as ``field``) is
        past its last event."""
        # Subscribe before reading, so that nothing written in between is missed.
        subscription = self._notifier.subscribe(job_id)
        try:
            job, replay = await asyncio.to_thread(self._jobs.with_events, job_id, after)
            if job is None or not visible_to(tenant, job.tenant):
                raise NotFound("job", job_id)
            if after > job.last_seq:
                raise InvalidRequest(
                    [
                        FieldProblem(
                            field,
                            f"{after} is past the job's last event ({job.last_seq})",
                            "resume with the id of an event you received, or from 0",
                        )
                    ]
                )
        except BaseException:
            subscription.close()
            raise
        return JobStream(self._batches(job, replay, after, subscription), subscription)

    async def follow(self, job_id: str, after: int) -> AsyncIterator[list[JobEvent]]:
        """``open``'s stream, iterated."""
        with closing(await self.open(job_id, after)) as stream:
            async for batch in stream:
                yield batch

    async def _batches(
        self, job: Job, replay: list[JobEvent], after: int, subscription: Subscription
    ) -> AsyncIterator[list[JobEvent]]:
        try:
            if job.status.is_terminal:
                # Ended: the log holds all there is (a webhook's lines may follow `done`).
                if replay:
                    yield replay
                return
            if job.status is JobStatus.RUNNING:
                # Each statement sees its own snapshot on PostgreSQL: the replay may have
                # gone further than the job's row.
                replayed = [e.data["progress"] for e in replay if "progress" in e.data]
                progress = max([job.progress, *replayed])
                snapshot = ProgressData(progress=progress, stage=job.stage)
                replay.append(JobEvent.live(job.id, snapshot, utcnow()))
            async for batch in self._in_order(job.id, after, replay, subscription):
                yield batch
        finally:
            subscription.close()

    async def _in_order(
        self, job_id: str, after: int, pending: list[JobEvent], subscription: Subscription
    ) -> AsyncIterator[list[JobEvent]]:
        """``pending``, then what the notifier brings, each durable event once and in
        order; the log fills any gap (a missed publish, events that overtook each other
        between processes) and is re-read when all is quiet."""
        while True:
            batch: list[JobEvent] = []
            gap = False
            for event in pending:
                if event.seq is None:
                    batch.append(event)
                elif event.seq == after + 1:
                    after = event.seq
                    batch.append(event)
                    if event.type is EventType.DONE:
                        yield batch
                        return
                elif event.seq > after + 1:
                    gap = True
                    break
            if batch:
                yield batch
            if not gap:
                pending = await subscription.wait(self._poll_s)
                if pending:
                    continue
            pending = await asyncio.to_thread(self._jobs.events, job_id, after)
