"""A job's life on the worker — failures, cancel, time limits, crashes, lost leases and
duplicate deliveries — end to end through the API, on the fake runner: no pipeline, so
each test takes a fraction of a second and can make the runner fail on demand."""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from dreamforge.config import Settings
from dreamforge.domain.clock import utcnow
from dreamforge.domain.jobs import JobStatus
from dreamforge.models.registry import TINY_DEFAULTS, ModelRegistry
from dreamforge.runners.fake import FakeRunner, Plan, Trouble
from dreamforge.runtime import DataDirInUse, Runtime
from dreamforge.store.models import ModelRepository
from dreamforge.worker.lifecycle import JobLifecycle, LeaseSettings
from dreamforge.worker.steps import StepDriver
from tests.conftest import ApiThread, free_port, register_tiny
from tests.helpers import durable, read_stream, submit, wait_for

PLANS = {
    "fail": Plan(Trouble.FAIL, at_step=2),
    "oom": Plan(Trouble.OOM, at_step=1),
    "crash": Plan(Trouble.CRASH, at_step=3),
    "hang": Plan(Trouble.HANG, at_step=1),
    "slow": Plan(Trouble.SLOW, at_step=1),
}


@dataclasses.dataclass
class FakeServer:
    client: httpx.Client
    runner: FakeRunner
    runtime: Runtime


@contextmanager
def serving_fake(
    data_dir: Path, tiny_model_dir: Path, runner: FakeRunner, **settings: Any
) -> Iterator[FakeServer]:
    """The embedded profile on ``runner``, the tiny model registered, on a port of its
    own, with ``settings`` over the defaults."""
    config = Settings(data_dir=data_dir, port=free_port(), **settings)
    register_tiny(config.resolved_database_url, tiny_model_dir)
    with (
        ApiThread(config, run_worker=True, runner=runner) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        yield FakeServer(client, runner, api.runtime)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[FakeServer]:
    """The embedded profile on the fake runner, 10 ms a step, every step reported (these
    tests count them), with a 2 s job time limit and retries 50-100 ms apart."""
    with serving_fake(
        tmp_path_factory.mktemp("fake"),
        tiny_model_dir,
        FakeRunner(step_s=0.01, plans=PLANS),
        progress_interval_s=0.0,
        job_time_limit_s=2.0,
        sse_ping_s=1.0,
        retry_backoff_s=0.1,
        retry_max_backoff_s=0.1,
    ) as server:
        yield server


def finished(client: httpx.Client, prompt: str, **spec: Any) -> tuple[dict[str, Any], list[Any]]:
    job = submit(client, prompt=prompt, **spec)
    events = read_stream(client, job["id"], timeout=30)
    return client.get(job["links"]["self"]).json(), events


def assert_failed_cleanly(
    fake: FakeServer, job: dict[str, Any], events: list[Any], code: str
) -> None:
    """What a user sees of a failed job: status, error, terminal event, log, no image."""
    assert job["status"] == "failed" and job["error"]["code"] == code, job
    assert job["finished_at"] and job["progress"] < 1
    assert events[-1].type == "done"
    assert events[-1].data["status"] == "failed" and events[-1].data["error"] == job["error"]
    lines = fake.client.get(job["links"]["logs"]).text.splitlines()
    assert f'"code":"{code}"' in lines[-1] and '"level":"error"' in lines[-1]
    assert fake.client.get(job["links"]["artifacts"]).json()["data"] == []
    # The worker is not poisoned: the next job on it succeeds.
    after, _ = finished(fake.client, "fine after a failure")
    assert after["status"] == "succeeded"


def test_the_worker_preloads_the_default_model_with_its_defaults(fake: FakeServer) -> None:
    """...before any job asks for it; a compiling runner compiles for one image of the
    defaults then (tests/test_compiled.py)."""
    assert fake.runner.preloaded == [("tiny-sdxl", TINY_DEFAULTS)]


def test_a_pipeline_error_fails_the_job_with_runner_error(fake: FakeServer) -> None:
    job, events = finished(fake.client, "fail")
    assert_failed_cleanly(fake, job, events, "RUNNER_ERROR")
    assert "the fake pipeline failed" in job["error"]["message"]


def test_out_of_memory_fails_the_job_with_gpu_oom(fake: FakeServer) -> None:
    job, events = finished(fake.client, "oom")
    assert_failed_cleanly(fake, job, events, "GPU_OOM")


def test_a_runner_that_dies_every_time_ends_in_the_dead_letter_queue(fake: FakeServer) -> None:
    job, events = finished(fake.client, "crash")
    assert_failed_cleanly(fake, job, events, "RUNNER_CRASHED")
    assert "exited with code -9" in job["error"]["message"]
    assert job["attempts"] == 3 and job["dead_lettered_at"]  # the default retry_max_attempts
    retried = [e.data["message"] for e in durable(events) if "retrying in" in str(e.data)]
    assert [m.split(" failed")[0] for m in retried] == ["attempt 1", "attempt 2"]
    listed = fake.client.get("/v1/admin/dlq").json()["data"]
    assert job["id"] in [j["id"] for j in listed]


def test_a_job_past_its_time_limit_is_killed_and_fails_with_timeout(fake: FakeServer) -> None:
    # The server's limit, on a job stuck inside one device call (a job past a limit of its
    # own between steps: test_a_job_may_ask_for_its_own_time_limit_within_the_servers).
    started = time.monotonic()
    job, events = finished(fake.client, "hang")
    assert 2.0 <= time.monotonic() - started < 10
    assert_failed_cleanly(fake, job, events, "TIMEOUT")
    assert "limit of 2s" in job["error"]["message"]


def test_a_model_that_is_no_longer_ready_fails_the_job(fake: FakeServer) -> None:
    registry = ModelRepository(fake.runtime.db)
    model = registry.get("tiny-sdxl")
    assert model is not None
    blocker = submit(fake.client, prompt="blocker", steps=30)
    queued = submit(fake.client, prompt="queued behind")
    registry.upsert(dataclasses.replace(model, status="missing"))
    try:
        events = read_stream(fake.client, queued["id"], timeout=30)
    finally:
        registry.upsert(model)
    job = fake.client.get(queued["links"]["self"]).json()
    wait_for(fake.client, blocker["id"], {"succeeded"})
    assert_failed_cleanly(fake, job, events, "MODEL_NOT_READY")


def test_a_storage_failure_fails_the_job_and_leaves_no_artifact(fake: FakeServer) -> None:
    blocker = submit(fake.client, prompt="blocker", steps=30)
    job = submit(fake.client, prompt="nowhere to write")
    root = Path(fake.runtime.settings.resolved_storage_url.removeprefix("file://"))
    (root / "jobs").mkdir(exist_ok=True)
    (root / "jobs" / job["id"]).write_text("a file where the job's folder should be")
    events = read_stream(fake.client, job["id"], timeout=30)
    wait_for(fake.client, blocker["id"], {"succeeded"})
    failed = fake.client.get(job["links"]["self"]).json()
    assert_failed_cleanly(fake, failed, events, "STORAGE_ERROR")
    assert failed["attempts"] == 3 and failed["dead_lettered_at"]


def test_a_running_job_stops_within_one_step_of_the_cancel(fake: FakeServer) -> None:
    job = submit(fake.client, prompt="cancel me", steps=150)
    read_stream(fake.client, job["id"], until=lambda e: "step" in e.data)
    assert fake.client.post(job["links"]["cancel"]).status_code == 202
    # On a busy machine the stream trails the runner by a few 10 ms steps, so the runner's
    # own count once the cancel is accepted (flagged and signalled) is where "within one
    # step" starts: only the step under way then may finish.
    accepted_at = fake.runner.stepped["cancel me"]
    events = read_stream(fake.client, job["id"])
    assert fake.runner.stepped["cancel me"] - accepted_at <= 1, accepted_at
    done = fake.client.get(job["links"]["self"]).json()
    assert done["status"] == "canceled" and done["error"] is None
    assert events[-1].data == {**events[-1].data, "status": "canceled", "error": None}
    assert fake.client.get(job["links"]["artifacts"]).json()["data"] == []


def test_a_canceled_queued_job_never_reaches_the_runner(fake: FakeServer) -> None:
    blocker = submit(fake.client, prompt="blocker", steps=30)
    queued = submit(fake.client, prompt="never rendered")
    assert fake.client.post(queued["links"]["cancel"]).json()["status"] == "canceled"
    wait_for(fake.client, blocker["id"], {"succeeded"})
    time.sleep(0.1)
    assert "never rendered" not in [prompt for prompt, _ in fake.runner.rendered]
    assert fake.client.get(queued["links"]["self"]).json()["attempts"] == 0


def test_a_resumed_stream_gets_the_progress_of_a_running_job_at_once(fake: FakeServer) -> None:
    job = submit(fake.client, prompt="long", steps=150)
    head = read_stream(fake.client, job["id"], until=lambda e: e.data.get("step", 0) >= 50)
    time.sleep(0.6)  # past progress_persist_s, so the job row has moved on
    resumed = read_stream(fake.client, job["id"], last_event_id=durable(head)[-1].id, limit=1)
    assert resumed[0].type == "progress" and resumed[0].id is None
    assert resumed[0].data["progress"] > head[-1].data["progress"]  # where it is now
    assert "step" not in resumed[0].data  # a snapshot, not a step
    fake.client.post(job["links"]["cancel"])
    wait_for(fake.client, job["id"], {"canceled"})


def test_a_client_that_leaves_a_stream_leaves_nothing_behind(fake: FakeServer) -> None:
    job = submit(fake.client, prompt="left while running", steps=150)
    assert len(read_stream(fake.client, job["id"], limit=2)) == 2  # then the client goes
    deadline = time.monotonic() + 5
    while fake.runtime.notifier.follows(job["id"]):
        assert time.monotonic() < deadline, "the stream still holds its subscription"
        time.sleep(0.02)
    fake.client.post(job["links"]["cancel"])
    wait_for(fake.client, job["id"], {"canceled"})


def step_arrivals(client: httpx.Client, job_id: str) -> list[tuple[int, float]]:
    """Each denoising step the job's stream reports, and when it arrived, to the end."""
    arrivals: list[tuple[int, float]] = []
    read_stream(
        client,
        job_id,
        until=lambda e: bool(
            "step" in e.data and arrivals.append((e.data["step"], time.monotonic()))
        ),
    )
    return arrivals


def gaps_between(arrivals: list[tuple[int, float]]) -> list[float]:
    return [b - a for (_, a), (_, b) in itertools.pairwise(arrivals)]


def test_live_progress_reaches_a_stream_within_a_step(fake: FakeServer) -> None:
    job = submit(fake.client, prompt="watched", steps=20)
    arrivals = step_arrivals(fake.client, job["id"])
    gaps = gaps_between(arrivals)
    # Steps take 10 ms; the log is only re-read every 2 s, so a stream that waited for
    # the database instead of the notifier would see gaps of seconds.
    assert len(arrivals) >= 10 and max(gaps) < 0.5, gaps


def test_steps_faster_than_the_progress_interval_are_reported_a_few_times_a_second(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with serving_fake(tmp_path, tiny_model_dir, FakeRunner(step_s=0.01)) as server:
        job = submit(server.client, prompt="watched at the default interval", steps=40)
        arrivals = step_arrivals(server.client, job["id"])
    steps = [step for step, _ in arrivals]
    # 40 steps of 10 ms, reported at most every 100 ms (the default): a handful, the last
    # always, each at once.
    assert steps == sorted(set(steps)) and steps[-1] == 40, steps
    assert 2 <= len(steps) < 20 and max(gaps_between(arrivals)) < 0.5, arrivals


def test_stage_changes_moments_apart_are_written_together_and_a_slow_load_is_heard_at_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    def stages(events: list[Any]) -> dict[str, tuple[int, str]]:
        """Each stage's event: where it came in the stream, and when it was written."""
        return {
            e.data["stage"]: (i, e.data["ts"]) for i, e in enumerate(events) if e.type == "stage"
        }

    # A progress interval of seconds (an operator cutting traffic) does not hold stage
    # changes longer than 0.1 s.
    runner = FakeRunner(step_s=0.01, load_s=1.0)
    arrivals: dict[str, float] = {}

    def heard(event: Any) -> bool:
        if event.type == "stage":
            arrivals.setdefault(event.data["stage"], time.monotonic())
        return False  # read on to the end

    with serving_fake(tmp_path, tiny_model_dir, runner, progress_interval_s=5.0) as server:
        server.runner.stop()  # as a recycled process: the preloaded model is gone
        first = submit(server.client, prompt="the model loads for 1 s", steps=4)
        read_stream(server.client, first["id"], until=heard)
        cached = submit(server.client, prompt="the model is loaded", steps=4)
        events = read_stream(server.client, cached["id"])
    # While a model loads, the stage is written (and heard) at once, not held for the next.
    assert arrivals["denoising"] - arrivals["loading_model"] > 0.5, arrivals
    # A loaded model's loading and denoising stages are one write, as are the saving
    # stage and the image stored a moment later: written together, with one time.
    at = stages(events)
    assert at["loading_model"][1] == at["denoising"][1], at
    (artifact,) = [e for e in events if e.type == "artifact"]
    assert at["saving"][1] == artifact.data["ts"], (at, artifact)
    # Held or not, a follower hears of a stage before its progress.
    first_step = next(i for i, e in enumerate(events) if "step" in e.data)
    assert at["denoising"][0] < first_step, events


# -- the lifecycle alone, on the same database: what a second worker would do ----------


def lifecycle(fake: FakeServer, worker_id: str, runner: FakeRunner) -> JobLifecycle:
    runtime = fake.runtime
    models = ModelRegistry(ModelRepository(runtime.db))
    driver = StepDriver(runtime.jobs, runtime.writer, models, runtime.storage, runner, 0.5)
    lease = LeaseSettings(worker_id, lease_s=0.3, heartbeat_s=0.05, time_limit_s=30)
    return JobLifecycle(
        runtime.jobs, runtime.writer, runtime.notifier, driver, lease, runtime.tasks.enqueue_job
    )


def test_a_job_delivered_twice_runs_once(fake: FakeServer) -> None:
    job = submit(fake.client, prompt="delivered twice")
    wait_for(fake.client, job["id"], {"succeeded"})
    other = FakeRunner()
    assert lifecycle(fake, "second-worker", other).run(job["id"]) is None
    assert other.rendered == []
    done = fake.client.get(job["links"]["self"]).json()
    assert done["attempts"] == 1
    assert len(fake.client.get(job["links"]["artifacts"]).json()["data"]) == 1


def test_a_worker_that_lost_its_lease_stops_and_leaves_the_job_to_another(
    fake: FakeServer,
) -> None:
    # A job that is in the database but was never sent, so only these workers see it.
    template = fake.runtime.jobs.get(submit(fake.client, prompt="template")["id"])
    assert template is not None
    job_id = str(uuid.uuid4())
    fake.runtime.jobs.create(job_id, template.spec.model_copy(update={"steps": 300}), [])

    slow_runner = FakeRunner(step_s=0.01)
    slow = lifecycle(fake, "slow-worker", slow_runner)
    outcome: list[JobStatus | None] = []
    thread = threading.Thread(target=lambda: outcome.append(slow.run(job_id)))
    thread.start()
    time.sleep(0.2)
    assert fake.runtime.reaper.requeue_orphans(expired_before=None) == [job_id]
    thread.join(5)
    assert outcome == [None]  # it stopped, and did not finish what is no longer its job
    assert slow_runner.rendered == []

    assert lifecycle(fake, "second-worker", FakeRunner()).run(job_id) is JobStatus.SUCCEEDED
    final = fake.client.get(f"/v1/jobs/{job_id}").json()
    assert final["attempts"] == 2 and final["status"] == "succeeded"
    logs = fake.client.get(f"/v1/jobs/{job_id}/logs").text
    assert "worker slow-worker was lost during attempt 1" in logs
    assert len(fake.client.get(f"/v1/jobs/{job_id}/artifacts").json()["data"]) == 1


def test_a_long_job_keeps_its_lease_alive(fake: FakeServer) -> None:
    template = fake.runtime.jobs.get(submit(fake.client, prompt="template")["id"])
    assert template is not None
    job_id = str(uuid.uuid4())
    fake.runtime.jobs.create(job_id, template.spec.model_copy(update={"steps": 100}), [])
    steady = lifecycle(fake, "steady-worker", FakeRunner(step_s=0.01))  # lease 0.3 s
    outcome: list[JobStatus | None] = []
    thread = threading.Thread(target=lambda: outcome.append(steady.run(job_id)))
    thread.start()
    reaped: list[str] = []
    while thread.is_alive():  # a reaper sweeping far more often than any real one
        reaped += fake.runtime.reaper.requeue_orphans(expired_before=utcnow())
        time.sleep(0.05)
    thread.join()
    assert reaped == [] and outcome == [JobStatus.SUCCEEDED]


def test_a_data_dir_serves_one_embedded_worker_at_a_time(fake: FakeServer) -> None:
    second = Runtime.build(fake.runtime.settings)
    try:
        with pytest.raises(DataDirInUse):
            second.start_embedded_worker(FakeRunner())
    finally:
        second.stop()


def test_readiness_fails_when_storage_or_the_worker_thread_fails(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", port=free_port())  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with (
        ApiThread(settings, run_worker=True, runner=FakeRunner()) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        assert client.get("/readyz").status_code == 200
        root = tmp_path / "data" / "artifacts"
        shutil.rmtree(root)
        root.write_text("not a folder")
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["storage"].startswith("error")
        root.unlink()
        root.mkdir()
        assert client.get("/readyz").status_code == 200

        worker = api.runtime._worker
        assert worker is not None
        for consumer in worker.consumers:
            consumer.stop(timeout=5_000)
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["queue"] == "error: the worker thread has stopped"


def test_a_job_may_ask_for_its_own_time_limit_within_the_servers(fake: FakeServer) -> None:
    started = time.monotonic()
    job, events = finished(fake.client, "slow", steps=100, time_limit_s=0.5)
    assert time.monotonic() - started < 1.8  # its own 0.5 s, not the server's 2 s
    assert_failed_cleanly(fake, job, events, "TIMEOUT")
    assert "limit of 0.5s" in job["error"]["message"]

    too_long = fake.client.post("/v1/jobs", json={"prompt": "x", "time_limit_s": 10**6})
    assert too_long.status_code == 422
    assert [e["field"] for e in too_long.json()["errors"]] == ["time_limit_s"]
