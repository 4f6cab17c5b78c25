"""`Idempotency-Key` on `POST /v1/jobs`, as in the IETF httpapi draft: a retry gets the
original job, a different body under the same key is refused, and concurrent duplicates
make exactly one job, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx

from dreamforge.domain.clock import utcnow
from dreamforge.domain.events import status_event
from dreamforge.domain.jobs import JobStatus
from dreamforge.domain.records import IdempotencyKey
from dreamforge.store.db import Database
from dreamforge.store.jobs import JobRepository, KeyTaken
from tests.conftest import LiveServer
from tests.helpers import wait_for
from tests.test_store import SPEC


def create(client: httpx.Client, key: str, **body: object) -> httpx.Response:
    return client.post(
        "/v1/jobs", json={"prompt": "once only", **body}, headers={"Idempotency-Key": key}
    )


def test_a_retry_with_the_same_key_gets_the_same_job(live: LiveServer) -> None:
    key = f"retry-{uuid.uuid4()}"
    first = create(live.client, key, seed=1)
    second = create(live.client, key, seed=1)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    wait_for(live.client, first.json()["id"], {"succeeded"})
    third = create(live.client, key, seed=1)  # also once it has run
    assert third.json()["id"] == first.json()["id"] and third.json()["status"] == "succeeded"


def test_the_same_key_with_another_body_is_refused(live: LiveServer) -> None:
    key = f"reuse-{uuid.uuid4()}"
    original = create(live.client, key, seed=1).json()
    response = create(live.client, key, seed=2)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert [e["field"] for e in problem["errors"]] == ["Idempotency-Key"]
    wait_for(live.client, original["id"], {"succeeded"})


def test_fifty_concurrent_creates_with_one_key_make_one_job(live: LiveServer) -> None:
    key = f"burst-{uuid.uuid4()}"
    prompt = f"burst {key}"
    with ThreadPoolExecutor(10) as pool:
        responses = list(
            pool.map(lambda _: create(live.client, key, prompt=prompt, seed=3), range(50))
        )
    assert {r.status_code for r in responses} == {202}
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1
    listed = live.client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    assert [j["id"] for j in listed if j["spec"]["prompt"] == prompt] == list(ids)
    wait_for(live.client, ids.pop(), {"succeeded"})


def test_a_key_is_refused_in_a_malformed_form(live: LiveServer) -> None:
    response = create(live.client, "x" * 256)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "Idempotency-Key"


def test_a_taken_key_creates_nothing_and_an_expired_one_is_free(database: Database) -> None:
    jobs = JobRepository(database)
    key = IdempotencyKey("k", "a" * 64)
    jobs.create("job-1", SPEC, [status_event(JobStatus.QUEUED)], key)
    try:
        jobs.create("job-2", SPEC, [status_event(JobStatus.QUEUED)], key)
        raise AssertionError("the key was taken")
    except KeyTaken:
        pass
    assert jobs.get("job-2") is None  # the whole create rolled back
    assert jobs.job_for_key("k", utcnow() - timedelta(hours=1)) == ("job-1", "a" * 64)
    later = utcnow() + timedelta(seconds=1)
    assert jobs.job_for_key("k", later) is None  # expired
    jobs.create("job-3", SPEC, [status_event(JobStatus.QUEUED)], key, keys_expire_before=later)
    assert jobs.job_for_key("k", utcnow() - timedelta(hours=1)) == ("job-3", "a" * 64)
