"""Jobs rendered on Replicate, against a local server that speaks its predictions API:
the job, its events, images and receipts look as a local one's do; failures map to Dream
Forge's codes (a refusal fails, an outage is retried); cancel reaches the provider; the
token is sent to the API and to nothing else, and never written down."""

from __future__ import annotations

import hashlib
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dreamforge.artifacts.receipts import read_receipt
from dreamforge.cli import app
from dreamforge.config import Settings
from tests.conftest import ApiThread, free_port, register_tiny
from tests.helpers import read_stream, submit, wait_for
from tests.processes import Worker
from tests.providers import TOKEN, VERSION, FakeReplicate

REMOTE = "sdxl-on-replicate"


@pytest.fixture(scope="module")
def replicate() -> Iterator[FakeReplicate]:
    fake = FakeReplicate()
    with fake.serve():
        yield fake


def add_remote(settings: Settings) -> None:
    env = {"DREAMFORGE_DATABASE_URL": settings.resolved_database_url}
    done = CliRunner().invoke(
        app,
        ["model", "add-remote", REMOTE, f"replicate:stability-ai/sdxl:{VERSION}",
         "--data-dir", str(settings.data_dir)],
        env=env,
    )  # fmt: skip
    assert done.exit_code == 0, done.output


@contextmanager
def serving_remote(
    replicate: FakeReplicate, data_dir: Path, tiny_model_dir: Path, **settings: Any
) -> Iterator[tuple[httpx.Client, Settings]]:
    """The embedded profile on its own port, rendering the remote model on ``replicate``,
    with ``settings`` over the defaults."""
    config = Settings(
        data_dir=data_dir,
        port=free_port(),
        replicate_api_token=TOKEN,
        replicate_endpoint=replicate.url,
        **settings,
    )
    register_tiny(config.resolved_database_url, tiny_model_dir)
    add_remote(config)
    with (
        ApiThread(config, run_worker=True) as api,
        httpx.Client(base_url=api.url, timeout=60) as client,
    ):
        yield client, config


@pytest.fixture(scope="module")
def server(
    replicate: FakeReplicate, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[tuple[httpx.Client, Settings]]:
    with serving_remote(
        replicate,
        tmp_path_factory.mktemp("remote"),
        tiny_model_dir,
        remote_poll_s=0.05,
        retry_backoff_s=0.05,
        retry_max_backoff_s=0.05,
    ) as served:
        yield served


def test_a_job_on_a_remote_model_looks_like_any_other(
    server: tuple[httpx.Client, Settings], replicate: FakeReplicate
) -> None:
    client, _ = server
    model = client.get(f"/v1/models/{REMOTE}").json()
    assert model["format"] == "remote" and model["base"] == "sdxl"
    before = len(replicate.created)
    job = submit(client, prompt="a remote fox", model_id=REMOTE, count=2, seed=40, steps=6,
                 width=64, height=64, scheduler="euler_a")  # fmt: skip
    events = read_stream(client, job["id"], timeout=60)
    assert events[-1].data["status"] == "succeeded"
    sent = replicate.created[before:]
    assert [c["input"]["seed"] for c in sent] == [40, 41]
    assert sent[0]["version"] == VERSION
    first = sent[0]["input"]
    assert (first["prompt"], first["width"], first["num_inference_steps"]) == (
        "a remote fox",
        64,
        6,
    )
    assert first["scheduler"] == "K_EULER_ANCESTRAL"
    steps = [e.data["step"] for e in events if e.type == "progress" and "step" in e.data]
    assert steps and max(steps) == 6  # progress read from the model's logs

    listed = client.get(job["links"]["artifacts"]).json()["data"]
    assert [a["seed"] for a in listed] == [40, 41]
    for artifact in listed:
        png = client.get(artifact["url"]).content  # from Dream Forge's own storage
        assert hashlib.sha256(png).hexdigest() == artifact["sha256"]
        receipt = read_receipt(png)
        assert receipt.device == "replicate" and receipt.model.id == REMOTE
        assert receipt.model.source == f"replicate:stability-ai/sdxl:{VERSION}"
        assert receipt.versions["replicate_model"] == f"stability-ai/sdxl:{VERSION}"
    log = client.get(job["links"]["logs"]).text
    assert TOKEN not in log


def test_a_refusal_fails_the_job_and_an_outage_is_retried(
    server: tuple[httpx.Client, Settings], replicate: FakeReplicate
) -> None:
    client, _ = server
    failed = submit(client, prompt="fail", model_id=REMOTE, width=64, height=64)
    job = wait_for(client, failed["id"], {"failed", "succeeded"}, 60)
    assert job["error"]["code"] == "PROVIDER_ERROR" and job["attempts"] == 1
    assert "NSFW content detected" in job["error"]["message"]

    busy = submit(client, prompt="busy", model_id=REMOTE, width=64, height=64)
    job = wait_for(client, busy["id"], {"failed", "succeeded"}, 60)
    assert job["status"] == "succeeded" and job["attempts"] == 2
    assert replicate.refused_creates == 1

    unipc = client.post("/v1/jobs", json={"prompt": "x", "model_id": REMOTE, "scheduler": "unipc"})
    assert unipc.status_code == 422 and unipc.json()["errors"][0]["field"] == "scheduler"
    assert "euler_a" in unipc.json()["errors"][0]["fix"]

    chained = client.post(
        "/v1/jobs", json={"prompt": "x", "model_id": REMOTE, "then": [{"type": "upscale"}]}
    )
    assert chained.status_code == 422 and chained.json()["errors"][0]["field"] == "then"


def test_cancel_reaches_the_provider(
    server: tuple[httpx.Client, Settings], replicate: FakeReplicate
) -> None:
    client, _ = server
    job = submit(client, prompt="slow", model_id=REMOTE, width=64, height=64, steps=20)
    read_stream(client, job["id"], until=lambda e: e.type == "progress" and "step" in e.data)
    client.post(job["links"]["cancel"])
    assert wait_for(client, job["id"], {"canceled"}, 30)["status"] == "canceled"
    (prediction,) = [p for p in replicate.predictions.values() if p["input"]["prompt"] == "slow"]
    assert prediction["id"] in replicate.canceled


def test_a_cancel_does_not_wait_for_the_next_poll(
    replicate: FakeReplicate, tmp_path: Path, tiny_model_dir: Path
) -> None:
    with serving_remote(replicate, tmp_path, tiny_model_dir, remote_poll_s=60) as (client, _):
        prompt = "slow, polled once a minute"
        job = submit(client, prompt=prompt, model_id=REMOTE, steps=20)
        deadline = time.monotonic() + 30
        while not [p for p in replicate.predictions.values() if p["input"]["prompt"] == prompt]:
            assert time.monotonic() < deadline, "the prediction was never created"
            time.sleep(0.05)
        time.sleep(0.5)  # the worker has looked once, and waits for its next poll
        started = time.monotonic()
        client.post(job["links"]["cancel"])
        assert wait_for(client, job["id"], {"canceled"}, 30)["status"] == "canceled"
        assert time.monotonic() - started < 10  # not the minute to the next poll
    (prediction,) = [p for p in replicate.predictions.values() if p["input"]["prompt"] == prompt]
    assert prediction["id"] in replicate.canceled


def test_a_remote_worker_takes_remote_jobs_from_its_own_queue(
    replicate: FakeReplicate,
    distributed_settings: Callable[..., Settings],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    settings = distributed_settings(
        port=free_port(),
        replicate_api_token=TOKEN,
        replicate_endpoint=replicate.url,
        remote_poll_s=0.05,
    )
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    add_remote(settings)
    remote = Worker(settings, tmp_path / "remote.log", queues="remote")
    remote.start()  # no gpu worker runs: a remote job must not need one
    try:
        with (
            ApiThread(settings, run_worker=False) as api,
            httpx.Client(base_url=api.url, timeout=60) as client,
        ):
            job = submit(client, prompt="queued remotely", model_id=REMOTE, width=64, height=64)
            finished = wait_for(client, job["id"], {"succeeded", "failed"}, 120)
            assert finished["status"] == "succeeded", finished
            local = submit(client, prompt="a local one")
            assert client.get(f"/v1/jobs/{local['id']}").json()["status"] == "queued"
    finally:
        remote.signal(signal.SIGTERM)  # and its log holds no token (it checks)
    assert TOKEN not in (tmp_path / "remote.log").read_text()
