"""Models downloaded in the background through the API (the io queue), followed over
SSE, while jobs on the gpu queue go on."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from dreamforge.config import Settings
from dreamforge.runners.fake import FakeRunner
from tests.conftest import ApiThread, free_port, register_tiny
from tests.helpers import submit, wait_for
from tests.hubs import CivitaiVersion, FakeCivitai, LocalHttpServer
from tests.processes import Worker


@dataclasses.dataclass
class Stack:
    client: httpx.Client
    civitai: FakeCivitai
    data_dir: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Stack]:
    civitai = FakeCivitai()
    port: list[int] = []
    hub = LocalHttpServer(civitai.app(port))
    port.append(hub.port)
    data = tmp_path_factory.mktemp("downloads")
    settings = Settings(  # type: ignore[call-arg]
        data_dir=data, port=free_port(), civitai_endpoint=hub.url, sse_ping_s=1.0
    )
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with (
        hub,
        ApiThread(settings, run_worker=True, runner=FakeRunner(step_s=0.01)) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        yield Stack(client, civitai, data)


def follow(client: httpx.Client, url: str, timeout: float = 60) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    with connect_sse(client, "GET", url, timeout=timeout) as source:
        for event in source.iter_sse():
            if event.data:
                seen.append(json.loads(event.data))
    return seen


def test_a_model_downloads_in_the_background_while_jobs_run(
    sdxl_checkpoint: Callable[..., bytes], stack: Stack, tmp_path: Path
) -> None:
    data = sdxl_checkpoint()
    stack.civitai.add(CivitaiVersion(21, 2, "Slow XL.safetensors", data, seconds=3.0))
    response = stack.client.post("/v1/models", json={"source": "civitai:21"})
    assert response.status_code == 202, response.text
    download = response.json()
    assert response.headers["location"] == download["links"]["self"]
    assert download["status"] == "queued" and download["source"] == "civitai:21"

    wait_for_download(stack.client, download, {"running"})
    job = submit(stack.client, prompt="while it downloads", steps=5)
    assert wait_for(stack.client, job["id"], {"succeeded"}, timeout=10)["status"] == "succeeded"
    assert stack.client.get(download["links"]["self"]).json()["status"] == "running"
    listed = stack.client.get("/v1/downloads").json()["data"]
    assert listed[0]["id"] == download["id"] and listed[0]["status"] == "running"

    updates = follow(stack.client, download["links"]["stream"])
    assert updates[-1]["status"] == "succeeded" and updates[-1]["model_id"] == "slow-xl"
    done = [u["bytes_done"] for u in updates]
    assert done == sorted(done) and done[-1] == len(data) == updates[-1]["bytes_total"]
    assert any(0 < d < len(data) for d in done)  # progress arrived while it ran

    model = stack.client.get(updates[-1]["links"]["model"]).json()
    assert model["status"] == "ready" and model["source"] == "civitai:21"
    assert model["sha256"] == hashlib.sha256(data).hexdigest()
    # A finished download's stream says so once and ends.
    assert [u["status"] for u in follow(stack.client, download["links"]["stream"])] == ["succeeded"]


def test_a_download_that_fails_its_hash_registers_nothing(
    sdxl_checkpoint: Callable[..., bytes], stack: Stack, tmp_path: Path
) -> None:
    data = sdxl_checkpoint()
    stack.civitai.add(CivitaiVersion(22, 2, "bad.safetensors", data, declared_sha256="CD" * 32))
    download = stack.client.post("/v1/models", json={"source": "civitai:22"}).json()
    final = follow(stack.client, download["links"]["stream"])[-1]
    assert final["status"] == "failed" and final["model_id"] is None
    assert "cd" * 32 in final["error"] and hashlib.sha256(data).hexdigest() in final["error"]
    assert stack.client.get("/v1/models/bad").status_code == 404
    assert not (stack.data_dir / "models" / "bad").exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"source": "ftp://example.com/x.safetensors"}, "source"),
        ({"source": "civitai:abc"}, "source"),
        ({"source": "civitai:1", "id": "../up"}, "id"),
        ({}, "source"),
    ],
)
def test_a_source_in_no_known_form_is_a_422(stack: Stack, body: dict[str, str], field: str) -> None:
    response = stack.client.post("/v1/models", json=body)
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


def wait_for_download(client: httpx.Client, download: dict[str, Any], statuses: set[str]) -> None:
    for event in follow_until(client, download["links"]["stream"], statuses):
        assert event["status"] in statuses | {"queued", "running"}


def follow_until(client: httpx.Client, url: str, statuses: set[str]) -> Iterator[dict[str, Any]]:
    with connect_sse(client, "GET", url, timeout=30) as source:
        for event in source.iter_sse():
            if event.data:
                update = json.loads(event.data)
                yield update
                if update["status"] in statuses:
                    return


@pytest.mark.slow
def test_an_io_worker_process_runs_downloads_in_the_distributed_profile(
    sdxl_checkpoint: Callable[..., bytes],
    distributed_settings: Callable[..., Settings],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    civitai = FakeCivitai()
    port: list[int] = []
    hub = LocalHttpServer(civitai.app(port))
    port.append(hub.port)
    data = sdxl_checkpoint()
    civitai.add(CivitaiVersion(31, 3, "remote.safetensors", data, needs_token=True))
    settings = distributed_settings(
        port=free_port(), civitai_endpoint=hub.url, civitai_token=civitai.token
    )
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    io_worker = Worker(settings, tmp_path / "io.log", queues="io")
    io_worker.start()
    try:
        with (
            hub,
            ApiThread(settings, run_worker=False) as api,
            httpx.Client(base_url=api.url, timeout=30) as client,
        ):
            download = client.post("/v1/models", json={"source": "civitai:31"}).json()
            final = follow(client, download["links"]["stream"], timeout=120)[-1]
            assert final["status"] == "succeeded", final
            model = client.get("/v1/models/remote").json()
            assert model["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        io_worker.signal(signal.SIGTERM)  # and its log holds no token
