"""Faults with real processes and real servers: a worker killed mid-job, Redis restarted
under a queue, PostgreSQL stopped under the API."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from dreamforge.config import Settings
from tests.conftest import ApiThread, free_port, register_tiny, unavailable
from tests.helpers import last_id, read_stream, submit, wait_for
from tests.processes import Worker
from tests.services import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.slow

# Short leases and frequent sweeps, so that lost work is found in seconds, not minutes.
FAST_RECOVERY = {
    "lease_s": 3.0,
    "heartbeat_s": 0.5,
    "reaper_interval_s": 0.5,
    "requeue_after_s": 3.0,
}


@contextmanager
def api_and_worker(settings: Settings, tiny_model_dir: Path, logs: Path) -> Iterator[httpx.Client]:
    """An API (a thread here) and a worker process on ``settings``; yields a client."""
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    worker = Worker(settings, logs / "worker.log")
    worker.start()
    try:
        with (
            ApiThread(settings, run_worker=False) as api,
            httpx.Client(base_url=api.url, timeout=60) as client,
        ):
            yield client
    finally:
        worker.signal(signal.SIGTERM)


def pid_in(worker_id: str) -> int:
    """The process id in a worker id (``host:pid:random``)."""
    return int(worker_id.rsplit(":", 2)[1])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_job_whose_worker_stops_runs_again_elsewhere(
    distributed_settings: Callable[..., Settings],
    tiny_model_dir: Path,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    settings = distributed_settings(port=free_port(), **FAST_RECOVERY)
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    # Two workers from the start, as in a fleet: whichever takes the job is stopped, and
    # the other, already warm, must take it over.
    workers = [Worker(settings, tmp_path / "a.log"), Worker(settings, tmp_path / "b.log")]
    for worker in workers:
        worker.start()
    with (
        ApiThread(settings, run_worker=False) as api,
        httpx.Client(base_url=api.url, timeout=60) as client,
    ):
        job = submit(client, steps=150, seed=11)
        try:
            before = read_stream(client, job["id"], until=lambda e: e.data.get("step", 0) >= 5)
            running = next(e for e in before if e.data.get("status") == "running")
            holder = next(w for w in workers if w.pid == pid_in(running.data["worker"]))
            stopped_at = datetime.now(UTC)
            holder.signal(sig)
            after = read_stream(client, job["id"], last_event_id=last_id(before), timeout=180)
            done = client.get(f"/v1/jobs/{job['id']}").json()
            artifacts = client.get(done["links"]["artifacts"]).json()["data"]
        finally:
            for worker in workers:
                if worker.alive():
                    worker.signal(signal.SIGTERM)
    messages = [e.data["message"] for e in after if e.type == "log"]
    assert after[-1].data["status"] == "succeeded", (done["error"], messages)
    assert done["attempts"] == 2
    rerun = next(e for e in after if e.data.get("status") == "running")
    assert pid_in(rerun.data["worker"]) != holder.pid  # elsewhere
    assert [a["key"] for a in artifacts] == [f"jobs/{job['id']}/00-generate/000.png"]
    assert httpx.get(artifacts[0]["url"]).status_code == 200
    assert any("attempt 2 (retry)" in m for m in messages), messages
    if sig is signal.SIGTERM:  # handed back by the worker itself, before it exits
        assert any("job returned to the queue" in m for m in messages), messages
        return
    requeued = next(e for e in after if "was lost during attempt 1; job requeued" in str(e.data))
    # Back on the queue within the lease plus a reaper sweep (and slack for a busy box).
    waited = (datetime.fromisoformat(requeued.data["ts"]) - stopped_at).total_seconds()
    assert waited < FAST_RECOVERY["lease_s"] + 2 * FAST_RECOVERY["reaper_interval_s"] + 2


def test_fifty_queued_jobs_survive_a_redis_restart(
    distributed_settings: Callable[..., Settings], tiny_model_dir: Path, tmp_path: Path
) -> None:
    redis = PrivateRedis(tmp_path)
    try:
        redis.start()
    except FileNotFoundError as exc:
        unavailable(str(exc))
    settings = distributed_settings(port=free_port(), broker_url=redis.url, **FAST_RECOVERY)
    try:
        with api_and_worker(settings, tiny_model_dir, tmp_path) as client:
            ids = [submit(client, seed=i)["id"] for i in range(50)]
            redis.stop()  # no persistence: every queued message is gone
            redis.start()
            finished = [
                wait_for(client, job_id, {"succeeded", "failed"}, timeout=300) for job_id in ids
            ]
            artifacts = [client.get(j["links"]["artifacts"]).json()["data"] for j in finished]
    finally:
        redis.stop()
    assert [j["status"] for j in finished] == ["succeeded"] * 50
    assert [len(a) for a in artifacts] == [1] * 50


def test_the_api_answers_503_while_postgres_is_down_and_recovers(
    distributed_settings: Callable[..., Settings], tiny_model_dir: Path, tmp_path: Path
) -> None:
    postgres = PrivatePostgres()
    try:
        postgres.init()
        postgres.start()
    except (FileNotFoundError, OSError) as exc:
        unavailable(f"a private PostgreSQL could not start: {exc}")
    settings = distributed_settings(port=free_port(), database_url=postgres.url, **FAST_RECOVERY)
    try:
        with api_and_worker(settings, tiny_model_dir, tmp_path) as client:
            ids = [submit(client, steps=20, seed=i)["id"] for i in range(3)]
            postgres.stop()
            for method, path, body in [
                ("GET", f"/v1/jobs/{ids[0]}", None),
                ("GET", "/v1/jobs", None),
                ("POST", "/v1/jobs", {"prompt": "during the outage"}),
                ("GET", f"/v1/jobs/{ids[0]}/logs", None),
            ]:
                started = time.monotonic()
                response = client.request(method, path, json=body)
                assert response.status_code == 503, (path, response.text)
                assert response.headers["content-type"] == "application/problem+json"
                assert response.json()["code"] == "UNAVAILABLE"
                assert "retry-after" in response.headers
                assert time.monotonic() - started < 10
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["database"] != "ok"

            postgres.start()
            deadline = time.monotonic() + 30
            while client.get(f"/v1/jobs/{ids[0]}").status_code != 200:
                assert time.monotonic() < deadline, "the API did not recover"
                time.sleep(0.5)
            finished = [
                wait_for(client, job_id, {"succeeded", "failed"}, timeout=180) for job_id in ids
            ]
            listed = client.get("/v1/jobs", params={"limit": 100}).json()["data"]
    finally:
        postgres.stop()
        postgres.remove()
    assert [j["status"] for j in finished] == ["succeeded"] * 3
    assert sorted(j["id"] for j in listed) == sorted(ids)  # none lost, none half-created


def test_jobs_waiting_in_a_healthy_backlog_are_not_sent_twice(
    distributed_settings: Callable[..., Settings], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """With re-sends after 3 s, a backlog of 10 s: the broker still holds every waiting
    job's message, so none is sent again (each extra send would be a wasted delivery)."""
    settings = distributed_settings(port=free_port(), **FAST_RECOVERY)
    with api_and_worker(settings, tiny_model_dir, tmp_path) as client:
        # Each renders on its own (no batch across jobs), so that the backlog lasts.
        ids = [submit(client, steps=30, seed=i, share_batch=False)["id"] for i in range(8)]
        finished = [wait_for(client, job_id, {"succeeded"}, timeout=180) for job_id in ids]
    log = (tmp_path / "worker.log").read_text()
    assert [j["attempts"] for j in finished] == [1] * 8
    assert "reaper.resent" not in log and "job.already_taken" not in log


def test_a_worker_stopping_under_a_backlog_drops_no_message(
    distributed_settings: Callable[..., Settings], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """Messages that reach a stopping worker stay in the queue for the next one: it stops
    consuming before it lets go of its job handler, so none is dead-lettered."""
    import redis

    settings = distributed_settings(port=free_port(), **FAST_RECOVERY)
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    first, second = Worker(settings, tmp_path / "a.log"), Worker(settings, tmp_path / "b.log")
    first.start()
    with (
        ApiThread(settings, run_worker=False) as api,
        httpx.Client(base_url=api.url, timeout=60) as client,
    ):
        jobs = [submit(client, steps=10, seed=i) for i in range(4)]
        read_stream(client, jobs[0]["id"], until=lambda e: e.data.get("step", 0) >= 2)
        first.signal(signal.SIGTERM)  # three messages wait behind the job it holds
        second.start()
        try:
            final = [wait_for(client, j["id"], {"succeeded", "failed"}, 180) for j in jobs]
        finally:
            second.signal(signal.SIGTERM)
    assert [job["status"] for job in final] == ["succeeded"] * 4
    dead = redis.Redis.from_url(settings.broker_url).zcard(f"{settings.redis_namespace}:gpu.XQ")
    assert dead == 0
    assert "not a worker process" not in (tmp_path / "a.log").read_text()
