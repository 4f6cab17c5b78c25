"""Prometheus metrics: what a scrape says after real jobs, parsed with prometheus-client's
own parser, on the embedded server and on an API of several processes."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from dreamforge.config import Settings
from dreamforge.runners.fake import Plan, Trouble
from tests.conftest import ApiThread, free_port, register_tiny
from tests.helpers import read_stream, submit
from tests.processes import Serve, Worker
from tests.test_lifecycle import FakeServer, fake  # noqa: F401 - the fixture

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_a_scrape_counts_jobs_stages_images_and_memory(fake: FakeServer) -> None:  # noqa: F811
    url = str(fake.client.base_url)
    fake.runner.plans = {**fake.runner.plans, "metrics fail": Plan(Trouble.FAIL, at_step=1)}
    before = scrape(url)
    good = submit(fake.client, prompt="metrics", count=2, steps=3)
    # On its own: denoised in one batch with the good job, it would render by that job's
    # plan (the fake runner follows the batch's first prompt) and succeed.
    bad = submit(fake.client, prompt="metrics fail", steps=3, share_batch=False)
    read_stream(fake.client, good["id"], timeout=30)
    read_stream(fake.client, bad["id"], timeout=30)
    after = scrape(url)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("dreamforge_jobs_created_total") == 2
    assert grew("dreamforge_jobs_finished_total", status="succeeded", code="") == 1
    assert grew("dreamforge_jobs_finished_total", status="failed", code="RUNNER_ERROR") == 1
    assert grew("dreamforge_items_rendered_total") == 2
    for stage in ("queue_wait", "model_load", "denoise", "encode", "upload", "job"):
        assert grew("dreamforge_stage_seconds_count", stage=stage) >= 1, stage
    assert grew("dreamforge_stage_seconds_count", stage="upload") == 2
    assert value(after, "dreamforge_device_memory_bytes", kind="allocated") == 2**30
    assert value(after, "dreamforge_device_memory_bytes", kind="total") == 24 * 2**30
    peak = 2**30 + 64 * 64 * 3000  # the weights and one 64x64 image's working memory
    assert value(after, "dreamforge_device_memory_bytes", kind="peak") == peak
    assert ("dreamforge_queue_depth", (("queue", "gpu"),)) in after


def test_a_job_canceled_before_it_started_is_counted_as_finished(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(data_dir=tmp_path, port=free_port())  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with (
        ApiThread(settings, run_worker=False) as api,  # no worker: the job stays queued
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        before = value(
            scrape(api.url), "dreamforge_jobs_finished_total", status="canceled", code=""
        )
        job = submit(client, prompt="never started")
        assert client.post(job["links"]["cancel"]).json()["status"] == "canceled"
        after = value(scrape(api.url), "dreamforge_jobs_finished_total", status="canceled", code="")
        assert after - before == 1


def test_an_api_of_several_processes_adds_up_their_counts(
    distributed_settings: Callable[..., Settings], tiny_model_dir: Path, tmp_path: Path
) -> None:
    settings = distributed_settings(port=free_port())
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    api = Serve(tmp_path, tmp_path / "api.log", command="api", settings=settings)
    api.args += ["--workers", "2"]
    api.start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            for seed in range(8):  # no worker runs: they stay queued
                submit(client, seed=seed)
        # Whichever process answers, the scrape sums them all.
        for _ in range(4):
            samples = scrape(api.url)
            assert value(samples, "dreamforge_jobs_created_total") == 8
            assert value(samples, "dreamforge_queue_depth", queue="gpu") >= 8
    finally:
        api.stop(signal.SIGTERM)


def test_a_worker_serves_what_it_did_on_its_own_port(
    distributed_settings: Callable[..., Settings], tiny_model_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    settings = distributed_settings(port=free_port(), worker_metrics_port=port)
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    worker = Worker(settings, tmp_path / "worker.log")
    worker.start()
    try:
        with (
            ApiThread(settings, run_worker=False) as api,
            httpx.Client(base_url=api.url, timeout=60) as client,
        ):
            job = submit(client, count=2, steps=2)
            read_stream(client, job["id"], timeout=120)
        samples = scrape(f"http://127.0.0.1:{port}")
    finally:
        worker.signal(signal.SIGTERM)
    assert value(samples, "dreamforge_jobs_finished_total", status="succeeded", code="") == 1
    assert value(samples, "dreamforge_items_rendered_total") == 2
    # Preloaded when the worker started: the job found it in memory.
    assert value(samples, "dreamforge_model_loads_total", source="cache") == 1
    assert value(samples, "dreamforge_stage_seconds_count", stage="denoise") >= 1
