"""Jobs of one shape denoised together in one device batch, on the fake runner: each keeps
its own seeds, prompt, events, images, receipt and cancel; a job that opts out, or of
another shape, renders alone; nothing is rendered twice."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from dreamforge.artifacts.receipts import read_receipt
from dreamforge.runners.fake import FakeRunner
from tests.helpers import read_stream, submit, wait_for
from tests.test_lifecycle import FakeServer, serving_fake

_names = (f"batched {i}" for i in itertools.count())


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[FakeServer]:
    """One worker, batches of up to 6 items, and a blocker job to queue the rest behind."""
    data_dir = tmp_path_factory.mktemp("batching")
    with serving_fake(
        data_dir, tiny_model_dir, FakeRunner(step_s=0.01), max_batch_size=6
    ) as server:
        yield server


def behind_a_blocker(fake: FakeServer, *specs: dict[str, Any]) -> list[dict[str, Any]]:
    """Submit ``specs`` while the worker is busy, so that they wait in the queue together."""
    blocker = submit(fake.client, prompt=next(_names), steps=40, width=72, share_batch=False)
    read_stream(fake.client, blocker["id"], until=lambda e: e.data.get("step", 0) >= 1)
    jobs = [submit(fake.client, **spec) for spec in specs]
    wait_for(fake.client, blocker["id"], {"succeeded"})
    return jobs


def test_jobs_of_one_shape_share_a_batch_and_keep_their_own_everything(fake: FakeServer) -> None:
    prompts = [next(_names) for _ in range(3)]
    jobs = behind_a_blocker(
        fake,
        {"prompt": prompts[0], "count": 2, "seed": 10, "steps": 3},
        {"prompt": prompts[1], "count": 1, "seed": 20, "steps": 3},
        {"prompt": prompts[2], "count": 2, "seed": 30, "steps": 3},
    )
    for job, prompt, seed in zip(jobs, prompts, (10, 20, 30), strict=True):
        events = read_stream(fake.client, job["id"], timeout=30)
        assert events[-1].data["status"] == "succeeded"
        logs = [e.data["message"] for e in events if e.type == "log"]
        assert any("in one device batch with 2 other job(s)" in m for m in logs), logs
        listed = fake.client.get(job["links"]["artifacts"]).json()["data"]
        assert [a["item_index"] for a in listed] == list(range(job["spec"]["count"]))
        for artifact in listed:
            receipt = read_receipt(fake.client.get(artifact["url"]).content)
            assert receipt.spec.prompt == prompt and receipt.seed == seed + artifact["item_index"]
            assert receipt.item_index == artifact["item_index"]
    # One render request for the three jobs (the leader's), each image rendered once,
    # with its own job's prompt and seed.
    assert [fake.runner.renders[p] for p in prompts] == [1, 0, 0]
    rendered = [r for r in fake.runner.rendered if r[0] in prompts]
    assert sorted(rendered) == sorted(
        [(prompts[0], 10), (prompts[0], 11), (prompts[1], 20), (prompts[2], 30), (prompts[2], 31)]
    )


def test_a_job_that_opts_out_or_differs_renders_alone(fake: FakeServer) -> None:
    jobs = behind_a_blocker(
        fake,
        {"prompt": next(_names), "steps": 3},
        {"prompt": next(_names), "steps": 3, "share_batch": False},
        {"prompt": next(_names), "steps": 4},
    )
    for job in jobs:
        logs = [e.data["message"] for e in read_stream(fake.client, job["id"]) if e.type == "log"]
        assert not any("device batch" in m for m in logs), logs


def test_a_canceled_job_leaves_the_batch_and_the_others_finish(fake: FakeServer) -> None:
    first, second = behind_a_blocker(
        fake,
        {"prompt": next(_names), "steps": 120, "seed": 1},
        {"prompt": next(_names), "steps": 120, "seed": 2},
    )
    read_stream(fake.client, first["id"], until=lambda e: e.data.get("step", 0) >= 3)
    fake.client.post(first["links"]["cancel"])
    canceled = wait_for(fake.client, first["id"], {"canceled"}, timeout=10)
    running = fake.client.get(second["links"]["self"]).json()
    assert running["status"] == "running", "the other job goes on without it"
    assert wait_for(fake.client, second["id"], {"succeeded"}, timeout=60)["status"] == "succeeded"
    assert canceled["finished_at"] < fake.client.get(second["links"]["self"]).json()["finished_at"]
    assert fake.client.get(first["links"]["artifacts"]).json()["data"] == []


@contextmanager
def windowed(
    data_dir: Path, tiny_model_dir: Path, window_s: float, max_batch: int, step_s: float = 0.01
) -> Iterator[httpx.Client]:
    """A client of a server of its own whose worker waits ``window_s`` for companions."""
    runner = FakeRunner(step_s=step_s)
    settings = {"max_batch_size": max_batch, "batch_window_s": window_s}
    with serving_fake(data_dir, tiny_model_dir, runner, **settings) as server:
        yield server.client


def started(client: httpx.Client, job: dict[str, Any]) -> tuple[datetime, str]:
    """When the job's worker started it (after gathering its batch), and what it said."""
    lines = [json.loads(line) for line in client.get(job["links"]["logs"]).text.splitlines()]
    (line,) = [line for line in lines if line["message"].startswith("started on worker")]
    return datetime.fromisoformat(line["ts"]), line["message"]


def seconds_between(earlier: str | datetime, later: datetime) -> float:
    since = earlier if isinstance(earlier, datetime) else datetime.fromisoformat(earlier)
    return (later - since).total_seconds()


def test_a_worker_waits_its_window_for_companions_and_no_longer(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with windowed(tmp_path, tiny_model_dir, window_s=1.5, max_batch=6) as client:
        first = submit(client, prompt="early", steps=3)
        time.sleep(0.5)  # within the window: it joins the first job's batch
        second = submit(client, prompt="in time", steps=3)
        for job in (first, second):
            wait_for(client, job["id"], {"succeeded"})
            assert "in one device batch with 1 other job(s)" in started(client, job)[1]
        alone = submit(client, prompt="late", steps=3)  # nobody comes: it starts after the window
        job = wait_for(client, alone["id"], {"succeeded"})
        at, message = started(client, job)
        assert "device batch" not in message
        waited = seconds_between(job["created_at"], at)
        assert 1.4 <= waited < 5, waited  # the window, and not much more


def test_a_full_batch_starts_without_waiting_out_the_window(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with windowed(tmp_path, tiny_model_dir, window_s=8, max_batch=2) as client:
        first = submit(client, prompt="first of two", steps=3)
        second = submit(client, prompt="second of two", steps=3)
        wait_for(client, second["id"], {"succeeded"})
        at, message = started(client, first)
        assert "in one device batch with 1 other job(s)" in message
        # Polled every 0.8 s (a tenth of the window): full at the first look after the
        # second job came, 7 s before the window's end.
        assert seconds_between(second["created_at"], at) < 3


def test_jobs_that_queued_longer_than_the_window_start_at_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    with windowed(tmp_path, tiny_model_dir, window_s=2, max_batch=6, step_s=0.02) as client:
        blocker = submit(client, prompt="blocker", steps=150, width=72, share_batch=False)
        read_stream(client, blocker["id"], until=lambda e: e.data.get("step", 0) >= 1)
        queued = [submit(client, prompt=f"queued {i}", steps=3) for i in range(2)]
        finished_at = datetime.fromisoformat(
            wait_for(client, blocker["id"], {"succeeded"})["finished_at"]
        )
        assert seconds_between(queued[1]["created_at"], finished_at) > 2, "outlasts the window"
        wait_for(client, queued[0]["id"], {"succeeded"})
        at, message = started(client, queued[0])
        # They queued together, so they batch together; the batch is not full, but its
        # jobs have waited their window already.
        assert "in one device batch with 1 other job(s)" in message
        assert seconds_between(finished_at, at) < 1.5
