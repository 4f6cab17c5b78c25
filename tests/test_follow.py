"""Following a job's events: the notifier is a fast path, the log the truth. Events that
overtake each other between processes, or a publish that never arrives, must cost a read
of the log, never an event or the order."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest

from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import InvalidRequest, NotFound
from dreamforge.domain.events import DoneData, JobEvent, ProgressData, log_event, status_event
from dreamforge.domain.jobs import JobStatus
from dreamforge.events.follow import JobEvents
from dreamforge.events.notifier import InProcessNotifier
from dreamforge.events.redis_notifier import RedisNotifier
from dreamforge.store.db import Database
from dreamforge.store.jobs import JobRepository
from tests.test_store import SPEC


def test_events_that_arrive_out_of_order_are_streamed_in_order(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    db.upgrade()
    jobs, notifier = JobRepository(db), InProcessNotifier()
    job_id = str(uuid.uuid4())
    jobs.create(job_id, SPEC, [status_event(JobStatus.QUEUED)])  # seq 1

    async def scenario() -> list[tuple[int | None, str]]:
        stream = JobEvents(jobs, notifier, poll_s=30).follow(job_id, 0)
        seen = [(e.seq, e.type.value) for e in await anext(stream)]  # the replay: seq 1
        # Three writes land in the log; the notifier delivers the last one first, and a
        # live progress event with it. The stream must fetch 2 and 3 from the log.
        two = jobs.record(job_id, [log_event("two")])
        three = jobs.record(job_id, [log_event("three")])
        four = jobs.record(
            job_id, [log_event("four"), DoneData(status=JobStatus.SUCCEEDED, error=None)]
        )
        live = JobEvent.live(job_id, ProgressData(progress=0.5, stage="denoising"), utcnow())
        notifier.publish(job_id, [live, *four])
        async for batch in stream:
            seen += [(e.seq, e.type.value) for e in batch]
        assert two and three
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    durable = [seq for seq, _ in seen if seq is not None]
    assert durable == [1, 2, 3, 4, 5], seen  # 2 and 3 refilled from the log, in order
    assert (None, "progress") in seen and seen[-1] == (5, "done")
    db.dispose()


def test_a_stream_lets_go_of_its_subscription_however_it_ends(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'f.db'}")
    db.upgrade()
    jobs, notifier = JobRepository(db), InProcessNotifier()
    job_id = str(uuid.uuid4())
    jobs.create(job_id, SPEC, [status_event(JobStatus.QUEUED)], tenant="acme")
    events = JobEvents(jobs, notifier, poll_s=30)

    async def scenario() -> None:
        # Refused before anything streams: another tenant's job, a position past its end.
        with pytest.raises(NotFound):
            await events.open(job_id, 0, tenant="other")
        with pytest.raises(InvalidRequest) as past:
            await events.open(job_id, 2, "Last-Event-ID", tenant="acme")
        assert past.value.errors[0].field == "Last-Event-ID"
        assert not notifier.follows(job_id)
        # Opened, then closed without being read (a client gone before the first byte).
        stream = await events.open(job_id, 0, tenant="acme")
        assert notifier.follows(job_id)
        stream.close()
        assert not notifier.follows(job_id)
        # Read to its end.
        stream = await events.open(job_id, 0, tenant="acme")
        jobs.record(job_id, [DoneData(status=JobStatus.CANCELED, error=None)])
        notifier.publish(job_id, jobs.events(job_id, 1))
        seen = [e.type.value async for batch in stream for e in batch]
        assert seen == ["status", "done"] and not notifier.follows(job_id)

    asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    db.dispose()


def test_a_cancel_signal_is_handed_to_every_listener_even_after_one_fails() -> None:
    notifier = InProcessNotifier()
    heard: list[str] = []

    def broken(job_id: str) -> None:
        raise RuntimeError("a listener that fails")

    notifier.on_cancel(broken)
    notifier.on_cancel(heard.append)
    notifier.publish_cancel("job-1")
    assert heard == ["job-1"] and notifier.cancel_requested("job-1")
    notifier.forget_cancel("job-1")
    assert not notifier.cancel_requested("job-1")


def test_a_cancel_published_by_one_process_reaches_the_listeners_of_another(
    redis_url: str,
) -> None:
    namespace = f"dreamforge-test-{uuid.uuid4().hex[:8]}"
    api, worker = RedisNotifier(redis_url, namespace), RedisNotifier(redis_url, namespace, False)
    heard = threading.Event()
    worker.on_cancel(lambda job_id: job_id == "job-2" and heard.set())
    try:
        # The worker's listener subscribes on its own thread: publish until it hears.
        deadline = time.monotonic() + 10
        while not heard.is_set() and time.monotonic() < deadline:
            api.publish_cancel("job-2")
            heard.wait(0.2)
        assert heard.is_set() and worker.cancel_requested("job-2")
    finally:
        api.close()
        worker.close()
