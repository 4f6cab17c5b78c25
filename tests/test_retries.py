"""Retries and the dead-letter queue, and a fault injected at every stage of a job.

A transient failure (the pipeline process dies, the object store or the database fails)
sends the job back to the queue after a backoff; a permanent one (a pipeline error, a
model that will not load, out of memory) fails it at once. Whatever the fault, the job
ends in the right state, no image is stored twice or left behind unlisted, and the next
job on the same worker succeeds.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from dreamforge.config import Settings
from dreamforge.domain.errors import ErrorCode
from dreamforge.domain.retries import RetryPolicy, Verdict
from dreamforge.runners.fake import Plan, Trouble, Where
from dreamforge.runners.process import SdxlProcessRunner
from dreamforge.runners.protocol import Finished, ItemRendered, ItemToRender, RenderRequest, Tick
from tests.conftest import ApiThread, free_port, register_tiny
from tests.helpers import (
    durable,
    last_id,
    read_stream,
    submit,
    tiny_model_ref,
    tiny_spec,
    wait_for,
)
from tests.test_lifecycle import FakeServer, fake  # noqa: F401 - the fixture

# -- the policy ---------------------------------------------------------------------------


def test_only_transient_failures_are_retried_and_only_while_attempts_last() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.verdict(ErrorCode.STORAGE_ERROR, 1) is Verdict.RETRY
    assert policy.verdict(ErrorCode.RUNNER_CRASHED, 2) is Verdict.RETRY
    assert policy.verdict(ErrorCode.WORKER_LOST, 3) is Verdict.DEAD_LETTER
    assert policy.verdict(ErrorCode.UNAVAILABLE, 4) is Verdict.DEAD_LETTER  # revived, failed again
    for permanent in (
        ErrorCode.RUNNER_ERROR,
        ErrorCode.GPU_OOM,
        ErrorCode.TIMEOUT,
        ErrorCode.MODEL_NOT_READY,
        ErrorCode.INSUFFICIENT_VRAM,
    ):
        assert policy.verdict(permanent, 1) is Verdict.FAIL


def test_backoff_doubles_up_to_its_cap_with_half_of_it_drawn() -> None:
    policy = RetryPolicy(max_attempts=10, backoff_s=2.0, max_backoff_s=10.0)
    assert [policy.delay_s(n, jitter=0.0) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 5.0]
    assert [policy.delay_s(n, jitter=0.999) for n in (1, 2)] == pytest.approx([2.0, 4.0], 0.01)


# -- a fault at every stage, end to end on the fake runner ---------------------------------

_names = (f"fault {n}" for n in itertools.count())


def stored_files(server: FakeServer, job_id: str) -> list[str]:
    root = Path(server.runtime.settings.resolved_storage_url.removeprefix("file://"))
    folder = root / "jobs" / job_id
    files = folder.rglob("*") if folder.is_dir() else iter(())
    return sorted(str(p.relative_to(root)) for p in files if p.is_file())


def run(server: FakeServer, plan: Plan | None = None, count: int = 2) -> dict[str, Any]:
    """A job of ``count`` items meeting ``plan``, followed to its end; checks what must
    hold whatever the fault: the job ended, each item stored once and listed, nothing
    stored unlisted, the next job fine."""
    prompt = next(_names)
    if plan is not None:
        server.runner.plans = {**server.runner.plans, prompt: plan}
    job = submit(server.client, prompt=prompt, count=count, steps=3)
    events = read_stream(server.client, job["id"], timeout=30)
    job = server.client.get(job["links"]["self"]).json()
    assert job["status"] in ("succeeded", "failed") and events[-1].type == "done", job
    listed = server.client.get(job["links"]["artifacts"]).json()["data"]
    keys = [a["key"] for a in listed]
    assert len(keys) == len(set(keys)) and keys == stored_files(server, job["id"])
    if job["status"] == "succeeded":
        assert len(listed) == count
    after = submit(server.client, prompt="fine after a fault")
    read_stream(server.client, after["id"], timeout=30)
    assert server.client.get(after["links"]["self"]).json()["status"] == "succeeded"
    job["_log"] = [e.data for e in durable(events) if e.type == "log"]
    job["_rendered"] = [seed for p, seed in server.runner.rendered if p == prompt]
    return job


@pytest.mark.parametrize(
    ("plan", "code"),
    [
        (Plan(Trouble.FAIL, where=Where.LOAD), "MODEL_NOT_READY"),
        (Plan(Trouble.FAIL, at_step=2, at_item=1), "RUNNER_ERROR"),
        (Plan(Trouble.OOM, where=Where.DECODE, at_item=1), "GPU_OOM"),
        (Plan(Trouble.FAIL, where=Where.ENCODE, at_item=1), "RUNNER_ERROR"),
    ],
    ids=["load", "step", "decode", "encode"],
)
def test_a_permanent_fault_fails_the_job_at_once(
    fake: FakeServer,  # noqa: F811
    plan: Plan,
    code: str,
) -> None:
    job = run(fake, plan)
    assert job["status"] == "failed" and job["error"]["code"] == code
    assert job["attempts"] == 1 and job["dead_lettered_at"] is None
    assert not any("retrying" in line["message"] for line in job["_log"])


@pytest.mark.parametrize(
    "where",
    [Where.LOAD, Where.STEP, Where.DECODE, Where.ENCODE],
    ids=["load", "step", "decode", "encode"],
)
def test_a_crash_at_any_stage_is_retried_and_the_job_succeeds(
    fake: FakeServer,  # noqa: F811
    where: Where,
) -> None:
    job = run(fake, Plan(Trouble.CRASH, at_step=2, at_item=1, where=where, times=1))
    assert job["status"] == "succeeded" and job["attempts"] == 2
    (retry,) = [line for line in job["_log"] if "retrying in" in line["message"]]
    assert retry["code"] == "RUNNER_CRASHED" and retry["level"] == "warning"
    assert "attempt 2 of 3" in retry["message"]
    assert sorted(job["_rendered"]) == sorted(job["spec"]["item_seeds"])  # each image once
    if where is not Where.LOAD:  # item 0 was stored before the crash, and kept
        assert any("1 item(s) already stored" in line["message"] for line in job["_log"])


@pytest.fixture
def failing_puts(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:  # noqa: F811
    """The object store refuses as many writes as the test puts in the list."""
    storage = fake.runtime.storage
    put = storage.put
    left = [0]

    def flaky_put(key: str, data: bytes, content_type: str) -> None:
        if left[0] > 0:
            left[0] -= 1
            raise ConnectionError("the object store hung up")
        put(key, data, content_type)

    monkeypatch.setattr(storage, "put", flaky_put)
    yield left


def test_an_upload_that_fails_once_is_retried(
    fake: FakeServer,  # noqa: F811
    failing_puts: list[int],
) -> None:
    failing_puts[0] = 1
    job = run(fake)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert any(line.get("code") == "STORAGE_ERROR" for line in job["_log"])


def test_uploads_that_keep_failing_end_in_the_dead_letter_queue(
    fake: FakeServer,  # noqa: F811
    failing_puts: list[int],
) -> None:
    failing_puts[0] = 3  # every attempt's one upload
    job = run(fake, count=1)
    assert job["status"] == "failed" and job["error"]["code"] == "STORAGE_ERROR"
    assert job["attempts"] == 3 and job["dead_lettered_at"]
    assert "the object store hung up" in job["error"]["message"]
    assert "dead-letter queue" in job["_log"][-1]["message"]


@pytest.fixture
def failing_event_writes(fake: FakeServer) -> Iterator[list[int]]:  # noqa: F811
    """The database refuses as many event inserts as the test puts in the list, counting
    from the ``[1]``-th insert on."""
    plan = [0, 0]

    def refuse(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not statement.startswith("INSERT INTO job_events"):
            return
        if plan[1] > 0:
            plan[1] -= 1
            return
        if plan[0] > 0:
            plan[0] -= 1
            raise OperationalError(statement, {}, Exception("the database hung up"))

    engine: sqlalchemy.Engine = fake.runtime.db.engine
    event.listen(engine, "before_cursor_execute", refuse)
    yield plan
    event.remove(engine, "before_cursor_execute", refuse)


def test_an_event_write_that_fails_mid_job_is_retried(
    fake: FakeServer,  # noqa: F811
    failing_event_writes: list[int],
) -> None:
    failing_event_writes[:] = [1, 4]  # claim, loading, denoising, item 0 stored; then item 1
    job = run(fake)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert any(line.get("code") == "UNAVAILABLE" for line in job["_log"])


def test_a_job_whose_workers_keep_vanishing_is_given_up_by_the_reaper(
    fake: FakeServer,  # noqa: F811
) -> None:
    # A job in the database but never sent, claimed for its last attempt by a worker that
    # then vanishes.
    template = fake.runtime.jobs.require(submit(fake.client, prompt="template")["id"])
    wait_for(fake.client, template.id, {"succeeded"})  # no other job is running
    job_id = str(uuid.uuid4())
    fake.runtime.jobs.create(job_id, template.spec, [])
    with fake.runtime.db.connection() as connection:
        connection.execute(
            sqlalchemy.text("UPDATE jobs SET attempts = 2 WHERE id = :id"), {"id": job_id}
        )
    assert fake.runtime.writer.claim(job_id, "ghost-worker", lease_s=0.01) is not None

    assert fake.runtime.reaper.requeue_orphans(expired_before=None) == []
    job = fake.client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"]["code"] == "WORKER_LOST"
    assert job["attempts"] == 3 and job["dead_lettered_at"]
    assert "worker ghost-worker was lost during attempt 3" in job["error"]["message"]
    events = read_stream(fake.client, job_id, timeout=5)
    assert events[-1].type == "done" and events[-1].data["error"]["code"] == "WORKER_LOST"


# -- the dead-letter queue ------------------------------------------------------------------


def test_a_dead_lettered_job_is_listed_retried_once_more_and_purged(
    fake: FakeServer,  # noqa: F811
) -> None:
    prompt = next(_names)
    fake.runner.plans = {**fake.runner.plans, prompt: Plan(Trouble.CRASH, at_step=2, times=3)}
    job = submit(fake.client, prompt=prompt, steps=3)
    first = read_stream(fake.client, job["id"], timeout=30)
    listed = fake.client.get("/v1/admin/dlq").json()["data"]
    assert listed[0]["id"] == job["id"] and listed[0]["error"]["code"] == "RUNNER_CRASHED"
    assert fake.client.post(f"/v1/admin/dlq/{job['id']}/retry").status_code == 202
    # A job not in the queue cannot be sent back: the API says why.
    refused = fake.client.post(f"/v1/admin/dlq/{job['id']}/retry")
    assert refused.status_code == 409 and "dead-letter queue" in refused.json()["detail"]
    # The log goes on after the first ``done``: a stream resumed after it follows the
    # new attempt to its own ``done``.
    events = read_stream(fake.client, job["id"], last_event_id=last_id(first), timeout=30)
    assert events[0].data["message"].startswith("sent back from the dead-letter queue")
    assert events[-1].type == "done" and events[-1].data["status"] == "succeeded"
    revived = fake.client.get(job["links"]["self"]).json()
    assert revived["status"] == "succeeded" and revived["attempts"] == 4
    assert revived["error"] is None and revived["dead_lettered_at"] is None
    assert job["id"] not in [j["id"] for j in fake.client.get("/v1/admin/dlq").json()["data"]]

    run(fake, Plan(Trouble.CRASH, at_step=1), count=1)  # dead-lettered again
    assert fake.client.get("/v1/admin/dlq").json()["data"]
    assert fake.client.delete("/v1/admin/dlq").json()["purged"] >= 1
    assert fake.client.get("/v1/admin/dlq").json()["data"] == []


# -- GPU hygiene, on the fake device -------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "status"),
    [
        ("clean success", "succeeded"),
        ("fail", "failed"),  # a pipeline error at step 2
        ("oom", "failed"),
        ("hang", "failed"),  # stuck until the time limit kills it
        ("cancel me", "canceled"),
    ],
)
def test_after_every_outcome_the_device_is_back_to_its_baseline(
    fake: FakeServer,  # noqa: F811
    prompt: str,
    status: str,
) -> None:
    job = submit(fake.client, prompt=prompt, steps=30 if prompt == "cancel me" else 3)
    if prompt == "cancel me":
        read_stream(fake.client, job["id"], until=lambda e: e.type == "progress", timeout=30)
        fake.client.post(job["links"]["cancel"])
    events = read_stream(fake.client, job["id"], timeout=30)
    assert events[-1].data["status"] == status
    device = fake.runner.device
    assert device.working_bytes == device.leaked_bytes == 0
    said = [e.data["message"] for e in durable(events) if e.type == "log"]
    if prompt != "hang":  # a killed runner takes its memory with it: nothing to check
        (clean,) = [m for m in said if m.startswith("device memory back to baseline")]
        assert "1.00 GiB allocated, baseline 1.00 GiB, 24.00 GiB in all on fake" in clean


def test_a_runner_that_leaks_device_memory_is_recycled(fake: FakeServer) -> None:  # noqa: F811
    fake.runner.plans = {**fake.runner.plans, "leaky": Plan(Trouble.LEAK, at_step=1)}
    leaky = submit(fake.client, prompt="leaky", width=512, height=512)  # 0.7 GiB left behind
    events = read_stream(fake.client, leaky["id"], timeout=30)
    assert events[-1].data["status"] == "succeeded"  # the job itself went well
    (warning,) = [e.data for e in durable(events) if "recycled" in str(e.data)]
    assert warning["level"] == "warning" and "above baseline" in warning["message"]
    assert "now 0.00 GiB allocated, baseline 0.00 GiB" in warning["message"]
    assert fake.runner.device.leaked_bytes == 0
    after = submit(fake.client, prompt="after the leak")
    events = read_stream(fake.client, after["id"], timeout=30)
    assert events[-1].data["status"] == "succeeded"
    assert any("back to baseline" in str(e.data) for e in events)


def test_a_job_too_large_for_the_device_fails_with_the_figures(fake: FakeServer) -> None:  # noqa: F811
    fake.runner.device.total_bytes = 3 * 2**30  # 1 GiB of weights: 2 GiB free
    try:
        job = submit(fake.client, prompt="too large", width=1024, height=1024, steps=2)
        events = read_stream(fake.client, job["id"], timeout=30)
        small = submit(fake.client, prompt="small enough", width=512, height=512, steps=2)
        small_events = read_stream(fake.client, small["id"], timeout=30)
    finally:
        fake.runner.device.total_bytes = 24 * 2**30
    error = events[-1].data["error"]
    assert error["code"] == "INSUFFICIENT_VRAM"
    assert "a 1024x1024 image needs about 2.9 GiB" in error["message"]
    assert "2.0 GiB of 3.0 GiB is free" in error["message"]
    assert small_events[-1].data["status"] == "succeeded"


# -- the real pipeline process -----------------------------------------------------------


def test_a_pipeline_process_killed_mid_job_is_replaced_and_the_job_retried(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(data_dir=tmp_path, port=free_port(), retry_backoff_s=0.1, sse_ping_s=1.0)  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    runner = SdxlProcessRunner()
    with (
        ApiThread(settings, run_worker=True, runner=runner) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        job = submit(client, prompt="killed mid-job", width=128, height=128, steps=30)
        read_stream(client, job["id"], until=lambda e: e.data.get("step", 0) >= 2, timeout=120)
        first = runner.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)  # the kernel's OOM killer, a driver segfault
        events = read_stream(client, job["id"], timeout=120)
        done = client.get(job["links"]["self"]).json()
        assert done["status"] == "succeeded" and done["attempts"] == 2
        assert runner.pid not in (None, first)
        (retry,) = [e.data for e in durable(events) if "retrying in" in str(e.data)]
        assert retry["code"] == "RUNNER_CRASHED" and "exit code -9" in retry["message"]
        assert len(client.get(job["links"]["artifacts"]).json()["data"]) == 1

        # Recycled (as GPU hygiene does when a job leaves memory behind): the child is
        # gone at once, and the next job starts a fresh one.
        second = runner.pid
        runner.recycle()
        assert runner.pid is None
        after = submit(client, prompt="after a recycle", steps=2)
        assert read_stream(client, after["id"], timeout=120)[-1].data["status"] == "succeeded"
        assert runner.pid not in (None, second)


@pytest.mark.parametrize("noticed", [True, False], ids=["death noticed", "at once"])
def test_a_pipeline_process_killed_while_it_preloads_is_replaced_by_the_next_job(
    tiny_model_dir: Path, noticed: bool
) -> None:
    """The next job's fresh process has no preload to answer for, and the job does not
    pay for the preload's crash. A job that comes at once mostly finds the process not
    yet known dead, and its end in the preload's answer."""
    runner = SdxlProcessRunner("cpu")
    model = tiny_model_ref(tiny_model_dir)
    spec = tiny_spec(steps=2, seed=3, item_seeds=(3,))
    messages: list[object] = []
    given_up = time.monotonic() + 120  # a job's time limit, so that a hang fails here

    def tick() -> Tick:
        return Tick.KILL if time.monotonic() > given_up else Tick.CONTINUE

    try:
        runner.preload(model)
        while (first := runner.pid) is None:  # started on a thread
            assert time.monotonic() < given_up, "the pipeline process never started"
            time.sleep(0.05)
        time.sleep(0.5)  # the preload is sent the moment the process has started
        os.kill(first, signal.SIGKILL)
        while noticed and runner.alive:
            time.sleep(0.05)
        outcome = runner.render(
            RenderRequest(spec, model, (ItemToRender(0, 3),)), messages.append, tick
        )
        assert isinstance(outcome, Finished), outcome
        assert runner.pid not in (None, first)
        assert [m for m in messages if isinstance(m, ItemRendered)]
    finally:
        runner.stop()
