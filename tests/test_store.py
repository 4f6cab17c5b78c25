"""The job repository on SQLite and PostgreSQL: claims, sequences, pages, orphans."""

from __future__ import annotations

import threading
import uuid

import pytest

from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import NotFound
from dreamforge.domain.events import EventType, log_event, status_event
from dreamforge.domain.jobs import (
    ALLOWED_TRANSITIONS,
    CANCEL_QUEUED,
    IllegalTransition,
    JobSpec,
    JobStatus,
    Scheduler,
    Transition,
    finish,
)
from dreamforge.domain.records import Artifact
from dreamforge.store.db import Database
from dreamforge.store.jobs import JobRepository

SPEC = JobSpec(
    prompt="p",
    negative_prompt="",
    width=64,
    height=64,
    steps=4,
    guidance_scale=5.0,
    scheduler=Scheduler.EULER,
    seed=2**32 - 1,
    model_id="tiny-sdxl",
)


def new_job(jobs: JobRepository) -> str:
    job_id = str(uuid.uuid4())
    jobs.create(job_id, SPEC, [status_event(JobStatus.QUEUED)])
    return job_id


def test_a_job_round_trips_with_its_spec(database: Database) -> None:
    jobs = JobRepository(database)
    job_id = new_job(jobs)
    job = jobs.get(job_id)
    assert job is not None
    assert job.spec == SPEC  # including a seed that needs 64 bits in PostgreSQL
    assert job.status is JobStatus.QUEUED and job.last_seq == 1
    assert job.created_at.tzinfo is not None


def test_a_jobs_artifacts_are_read_in_item_order_and_only_for_its_tenant(
    database: Database,
) -> None:
    jobs = JobRepository(database)
    job_id = new_job(jobs)
    assert jobs.require_artifacts(job_id, "default") == []
    with pytest.raises(NotFound):
        jobs.require_artifacts(job_id, "another-tenant")
    for item in (1, 0):
        key = f"{job_id}/generate-{item}.png"
        artifact = Artifact(
            job_id, 0, "generate", item, key, "image/png", 3, "ab", 64, 64, 7, utcnow()
        )
        jobs.save_artifact(artifact, [])
    assert [a.item_index for a in jobs.require_artifacts(job_id)] == [0, 1]
    with pytest.raises(NotFound):
        jobs.require_artifacts(str(uuid.uuid4()))


def test_only_one_of_two_workers_claims_a_job(database: Database) -> None:
    jobs = JobRepository(database)
    job_id = new_job(jobs)
    first = jobs.claim(job_id, "worker-a", 30, [status_event(JobStatus.RUNNING)])
    second = jobs.claim(job_id, "worker-b", 30, [status_event(JobStatus.RUNNING)])
    assert first is not None and first[0].lease_owner == "worker-a" and first[0].attempts == 1
    assert second is None
    assert [e.type for e in jobs.events(job_id)] == [EventType.STATUS, EventType.STATUS]


def test_concurrent_writers_get_distinct_gapless_sequence_numbers(database: Database) -> None:
    jobs = JobRepository(database)
    job_id = new_job(jobs)

    def write(n: int) -> None:
        for i in range(10):
            jobs.record(job_id, [log_event(f"{n}-{i}"), log_event(f"{n}-{i}b")])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seqs = [e.seq for e in jobs.events(job_id)]
    assert seqs == list(range(1, 82))
    messages = [e.data["message"] for e in jobs.events(job_id) if e.type is EventType.LOG]
    for n in range(4):  # each writer's pair stayed adjacent: one transaction each
        for i in range(10):
            at = messages.index(f"{n}-{i}")
            assert messages[at + 1] == f"{n}-{i}b"


def test_transitions_hold_only_from_the_stated_status_and_owner(database: Database) -> None:
    jobs = JobRepository(database)
    job_id = new_job(jobs)
    jobs.claim(job_id, "worker-a", 30, [])
    succeed = finish(JobStatus.SUCCEEDED)
    wrong_owner = jobs.transition(
        job_id, succeed, [status_event(JobStatus.SUCCEEDED)], owner="worker-b"
    )
    assert wrong_owner is None
    right = jobs.transition(job_id, succeed, [status_event(JobStatus.SUCCEEDED)], owner="worker-a")
    assert right is not None and right[0].seq == 2
    job = jobs.get(job_id)
    assert job is not None and job.status is JobStatus.SUCCEEDED


def test_pages_cover_every_job_once_newest_first(database: Database) -> None:
    jobs = JobRepository(database)
    ids = [new_job(jobs) for _ in range(7)]
    seen, cursor = [], None
    while True:
        page = jobs.page(None, 3, cursor, "default")
        seen += [j.id for j in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == ids[::-1]


def test_orphans_are_running_jobs_past_their_lease(database: Database) -> None:
    jobs = JobRepository(database)
    fresh, stale, queued = new_job(jobs), new_job(jobs), new_job(jobs)
    jobs.claim(fresh, "w", 60, [])
    jobs.claim(stale, "w", -1, [])
    stale_job = jobs.get(stale)
    assert stale_job is not None
    from datetime import UTC, datetime

    assert [j.id for j in jobs.orphaned(datetime.now(UTC))] == [stale]
    assert {j.id for j in jobs.orphaned(None)} == {fresh, stale}
    assert jobs.queued_ids() == [queued]


def job_in(jobs: JobRepository, status: JobStatus) -> str:
    """A job brought to ``status`` by allowed moves only."""
    job_id = new_job(jobs)
    if status is JobStatus.CANCELED:
        assert jobs.transition(job_id, CANCEL_QUEUED, []) is not None
    elif status is not JobStatus.QUEUED:
        assert jobs.claim(job_id, "w", 30, []) is not None
        if status is not JobStatus.RUNNING:
            assert jobs.transition(job_id, finish(status), []) is not None
    return job_id


def test_the_store_refuses_every_move_the_state_machine_forbids(database: Database) -> None:
    jobs = JobRepository(database)
    forbidden = [
        Transition(a, b) for a in JobStatus for b in JobStatus if b not in ALLOWED_TRANSITIONS[a]
    ]
    assert len(forbidden) == 18  # 25 pairs, 7 allowed
    for move in forbidden:
        job_id = job_in(jobs, move.source)
        before = jobs.get(job_id)
        with pytest.raises(IllegalTransition):
            jobs.transition(job_id, move, [status_event(move.target)])
        assert jobs.get(job_id) == before, move  # nothing written, not even an event


def test_an_allowed_move_applies_only_from_its_source(database: Database) -> None:
    jobs = JobRepository(database)
    for source, targets in ALLOWED_TRANSITIONS.items():
        for target in targets:
            move = Transition(source, target)
            for current in JobStatus:
                job_id = job_in(jobs, current)
                applied = jobs.transition(job_id, move, [status_event(target)])
                job = jobs.get(job_id)
                assert job is not None
                if current is source:
                    assert applied is not None and job.status is target, (move, current)
                else:
                    assert applied is None and job.status is current, (move, current)


def test_usage_counts_a_tenants_queued_jobs_and_todays_images(database: Database) -> None:
    from datetime import timedelta

    from dreamforge.domain.clock import utcnow
    from dreamforge.domain.quotas import Usage
    from tests.helpers import tiny_spec

    jobs = JobRepository(database)
    created = []
    for count, tenant in ((3, "a"), (4, "a"), (2, "b")):
        created.append(str(uuid.uuid4()))
        jobs.create(created[-1], tiny_spec(count=count, item_seeds=(1,) * count), [], tenant=tenant)
    jobs.claim(created[0], "w", 30, [])  # running: not waiting any more
    finished = str(uuid.uuid4())
    jobs.create(finished, tiny_spec(), [], tenant="a")
    jobs.claim(finished, "w", 30, [])
    jobs.transition(finished, finish(JobStatus.SUCCEEDED), [])
    now = utcnow()
    assert jobs.usage("a", now - timedelta(hours=1)) == Usage(queued_jobs=1, images_today=8)
    assert jobs.usage("b", now - timedelta(hours=1)) == Usage(queued_jobs=1, images_today=2)
    assert jobs.usage("a", now + timedelta(hours=1)) == Usage(queued_jobs=1, images_today=0)
    assert jobs.usage("nobody", now) == Usage(0, 0)


def test_a_claim_under_a_running_limit_waits_for_the_tenants_running_jobs(
    database: Database,
) -> None:
    from tests.helpers import tiny_spec

    jobs = JobRepository(database)
    ids = {name: str(uuid.uuid4()) for name in ("a1", "a2", "b1")}
    for name, job_id in ids.items():
        jobs.create(job_id, tiny_spec(), [], tenant=name[0])
    assert jobs.claim(ids["a1"], "w1", 30, [], running_limit=("a", 1)) is not None
    assert jobs.claim(ids["a2"], "w2", 30, [], running_limit=("a", 1)) is None
    assert jobs.claim(ids["b1"], "w2", 30, [], running_limit=("b", 1)) is not None
    waiting = jobs.get(ids["a2"])
    assert waiting is not None and waiting.status is JobStatus.QUEUED and waiting.attempts == 0
    jobs.transition(ids["a1"], finish(JobStatus.SUCCEEDED), [], owner="w1")
    assert jobs.claim(ids["a2"], "w2", 30, [], running_limit=("a", 1)) is not None


def test_concurrent_claims_for_one_tenant_never_pass_its_running_limit(
    postgres_url: str,
) -> None:
    """Two workers claiming two of a tenant's jobs at the same moment: one wins."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers import tiny_spec

    database = Database(postgres_url)
    database.upgrade()
    jobs = JobRepository(database)
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    with ThreadPoolExecutor(2) as pool:
        for _ in range(15):
            pair = [str(uuid.uuid4()) for _ in range(2)]
            for job_id in pair:
                jobs.create(job_id, tiny_spec(), [], tenant=tenant)
            won = list(
                pool.map(
                    lambda job_id: jobs.claim(job_id, job_id, 30, [], running_limit=(tenant, 1)),
                    pair,
                )
            )
            assert sum(w is not None for w in won) == 1
            winner = pair[[w is not None for w in won].index(True)]
            jobs.transition(winner, finish(JobStatus.SUCCEEDED), [], owner=winner)
            loser = next(j for j in pair if j != winner)
            jobs.transition(loser, CANCEL_QUEUED, [])
    database.dispose()
