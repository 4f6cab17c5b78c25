"""Chains through the real pipeline: the tiny SDXL, then the tiny ESRGAN (loaded by
spandrel, over tiles), then SDXL image-to-image; golden pixels on the CPU for each step;
and a server killed mid-upscale resuming without rendering again what it stored."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from dreamforge.config import Settings
from dreamforge.models.formats import inspect_model
from dreamforge.models.registry import ModelRegistry
from dreamforge.store.db import Database
from dreamforge.store.models import ModelRepository
from tests.conftest import LiveServer, register_tiny
from tests.helpers import assert_matches_golden, durable, last_id, read_stream, run_to_end
from tests.processes import Serve

UPSCALER = "tiny-esrgan"


def with_upscaler(runtime: Any, upscaler: Path) -> None:
    if runtime.models.get(UPSCALER) is None:
        runtime.models.add(upscaler, runtime.settings.models_dir, UPSCALER)


def test_the_tiny_upscaler_is_recognised_as_one(tiny_upscaler: Path) -> None:
    found = inspect_model(tiny_upscaler)
    assert (found.format, found.architecture) == ("single_file", "upscaler")


def test_golden_chain_pixels(live: LiveServer, tiny_upscaler: Path) -> None:
    with_upscaler(live.runtime, tiny_upscaler)
    job, events = run_to_end(
        live.client,
        prompt="a lighthouse at dawn",
        seed=20261130,
        steps=3,
        width=64,
        height=64,
        then=[
            {"type": "upscale", "model_id": UPSCALER, "scale": 2},
            {"type": "refine", "strength": 0.5, "steps": 4},
        ],
    )
    assert job["status"] == "succeeded", job
    listed = live.client.get(job["links"]["artifacts"]).json()["data"]
    assert [(a["step_type"], a["width"]) for a in listed] == [
        ("generate", 64), ("upscale", 128), ("refine", 128)
    ]  # fmt: skip
    for artifact, golden in zip(
        listed, ("chain-generate", "chain-upscale", "chain-refine"), strict=True
    ):
        assert_matches_golden(httpx.get(artifact["url"]).content, golden)
    logs = [e.data["message"] for e in durable(events) if e.type == "log"]
    assert any(f"upscaling 1 item(s) x2 to 128x128 with {UPSCALER}" in m for m in logs), logs


@pytest.mark.slow
def test_a_server_killed_mid_upscale_resumes_at_the_missing_images(
    tmp_path: Path, tiny_model_dir: Path, tiny_upscaler: Path
) -> None:
    data = tmp_path / "data"
    register_tiny(f"sqlite:///{(data / 'dreamforge.db').resolve()}", tiny_model_dir)
    settings = Settings(data_dir=data, upscale_tile_px=32)  # type: ignore[call-arg]
    database = Database(settings.resolved_database_url)
    ModelRegistry(ModelRepository(database)).add(tiny_upscaler, settings.models_dir, UPSCALER)
    database.dispose()
    server = Serve(data, tmp_path / "serve.log", settings=settings)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            chain = [{"type": "upscale", "model_id": UPSCALER, "scale": 2}]
            job = client.post(
                "/v1/jobs",
                json={"prompt": "kill me", "count": 3, "steps": 2, "width": 256, "height": 256,
                      "then": chain},
            ).json()  # fmt: skip
            before = read_stream(
                client,
                job["id"],
                until=lambda e: e.type == "artifact" and e.data["step_index"] == 1,
                timeout=180,
            )
            generated = {
                e.data["key"]: e.data["sha256"]
                for e in before
                if e.type == "artifact" and e.data["step_index"] == 0
            }
        server.stop(signal.SIGKILL)
        assert len(generated) == 3

        server.start()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            after = read_stream(client, job["id"], last_event_id=last_id(before), timeout=300)
            assert after[-1].data["status"] == "succeeded"
            finished = client.get(f"/v1/jobs/{job['id']}").json()
            assert finished["attempts"] == 2
            listed = client.get(finished["links"]["artifacts"]).json()["data"]
        keys = [a["key"] for a in listed]
        assert len(keys) == len(set(keys)) == 6
        assert {a["key"]: a["sha256"] for a in listed if a["step_index"] == 0} == generated
        logs = [e.data for e in after if e.type == "log"]
        resumed = [d["message"] for d in logs if "already stored" in d["message"]]
        assert "3 item(s) already stored; skipping them" in resumed[0]
        assert len(resumed) == 2  # the upscale step had at least one stored too
        assert not any(d["message"].startswith("denoising") for d in logs)  # generate: none
        stored_again = [e for e in after if e.type == "artifact" and e.data["step_index"] == 0]
        assert not stored_again
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop(signal.SIGKILL)
