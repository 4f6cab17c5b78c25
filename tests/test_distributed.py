"""What only the distributed profile has to prove: events cross processes, and a job
delivered twice still runs once."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from dreamforge.artifacts.s3 import S3Storage
from dreamforge.artifacts.storage import LocalStorage
from dreamforge.config import Settings
from dreamforge.queue.broker import GPU_QUEUE
from tests.conftest import ApiThread, LiveServer, free_port, register_tiny
from tests.helpers import (
    cancel_while_following,
    durable,
    last_id,
    read_stream,
    submit,
    wait_for,
)
from tests.processes import Worker


def stored_keys(live: LiveServer, job_id: str) -> list[str]:
    """The objects really in storage under the job's prefix (not what the database says)."""
    storage = live.runtime.storage
    prefix = f"jobs/{job_id}/"
    if isinstance(storage, LocalStorage):
        return sorted(
            str(p.relative_to(storage.root)) for p in (storage.root / prefix).rglob("*.png")
        )
    assert isinstance(storage, S3Storage)
    listing = storage._client.list_objects_v2(
        Bucket=storage.bucket, Prefix=f"{storage.prefix}/{prefix}"
    )
    return sorted(o["Key"].removeprefix(f"{storage.prefix}/") for o in listing.get("Contents", []))


def test_a_job_delivered_many_times_runs_once(live: LiveServer) -> None:
    job = submit(live.client, steps=30)
    for _ in range(3):  # what a broker's redelivery looks like to the worker
        live.runtime.tasks.enqueue_job(job["id"])
    events = read_stream(live.client, job["id"])
    # Every delivery is consumed (acknowledged) before anything is counted: a second run
    # would otherwise still be under way, unseen.
    live.runtime.tasks.broker.join(GPU_QUEUE, timeout=60_000)
    done = live.client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    replay = read_stream(live.client, job["id"])
    assert [e.data["status"] for e in replay if e.type == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert replay == durable(events)
    steps = [e.data["step"] for e in events if "step" in e.data]
    assert steps == sorted(set(steps)) and steps[-1] == 30  # one run: no step twice
    assert stored_keys(live, job["id"]) == [f"jobs/{job['id']}/00-generate/000.png"]
    assert len(live.client.get(done["links"]["artifacts"]).json()["data"]) == 1


@pytest.fixture(scope="module")
def two_apis_and_a_worker(
    distributed_settings: Callable[..., Settings],
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, str]]:
    """Two API processes' worth of runtime (threads here) and one worker process; yields
    the two APIs' URLs."""
    settings = distributed_settings(port=free_port())
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    worker = Worker(settings, tmp_path_factory.mktemp("logs") / "worker.log")
    worker.start()
    other = settings.model_copy(update={"port": free_port()})
    with ApiThread(settings, run_worker=False) as a, ApiThread(other, run_worker=False) as b:
        yield a.url, b.url
    worker.signal(signal.SIGTERM)


@pytest.fixture
def clients(two_apis_and_a_worker: tuple[str, str]) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    a, b = two_apis_and_a_worker
    with httpx.Client(base_url=a, timeout=60) as on_a, httpx.Client(base_url=b, timeout=60) as on_b:
        yield on_a, on_b


def test_a_stream_follows_a_worker_and_resumes_on_another_api(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    on_a, on_b = clients
    job = submit(on_a, steps=40)
    head = read_stream(on_a, job["id"], until=lambda e: e.data.get("step", 0) >= 10)
    assert any(e.type == "status" and e.data["status"] == "running" for e in head)
    rest = read_stream(on_b, job["id"], last_event_id=last_id(head))
    ids = [e.id for e in durable(head + rest)]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-1].type == "done" and rest[-1].data["status"] == "succeeded"
    assert wait_for(on_b, job["id"], {"succeeded"})["attempts"] == 1


def test_cancel_through_one_api_stops_the_worker(
    clients: tuple[httpx.Client, httpx.Client],
) -> None:
    on_a, on_b = clients
    # 256px steps (0.1-0.2 s here, like an SDXL step on a GPU) outlast the trip of the
    # cancel through an API, PostgreSQL and Redis even on a loaded machine; 128px steps
    # (~0.03 s when the machine is idle) did not always.
    job = submit(on_a, steps=150, width=256, height=256)
    job["links"]["cancel"] = f"{on_b.base_url}/v1/jobs/{job['id']}/cancel"  # through B
    sent_at, events = cancel_while_following(on_a, job)
    done = wait_for(on_a, job["id"], {"canceled"}, timeout=30)
    steps = [e.data["step"] for e in events if "step" in e.data]
    assert steps[-1] - sent_at <= 2, (sent_at, steps)
    assert done["error"] is None
