"""Chains on the fake runner: generate → upscale → refine in one job. Each step's images
stored with receipts naming their parents, progress one bar from 0 to 1 over the chain,
cancel within a step keeping the steps before, a retry resuming where the images stop,
and what the API refuses at submit."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dreamforge.artifacts.receipts import read_receipt
from dreamforge.runners.fake import FakeRunner, Plan, Trouble
from tests.helpers import durable, read_stream, submit, wait_for
from tests.test_lifecycle import FakeServer, serving_fake

CHAIN = [{"type": "upscale", "scale": 2}, {"type": "refine", "strength": 0.5, "steps": 4}]
_names = (f"chain {i}" for i in itertools.count())


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[FakeServer]:
    with serving_fake(
        tmp_path_factory.mktemp("chains"),
        tiny_model_dir,
        FakeRunner(step_s=0.005),
        max_output_side=512,
        retry_backoff_s=0.05,
        retry_max_backoff_s=0.05,
    ) as server:
        yield server


def artifacts(fake: FakeServer, job: dict[str, Any]) -> list[dict[str, Any]]:
    return fake.client.get(job["links"]["artifacts"]).json()["data"]  # type: ignore[no-any-return]


def test_each_step_stores_its_images_naming_their_parents(fake: FakeServer) -> None:
    job = submit(fake.client, prompt=next(_names), count=2, steps=3, seed=9, then=CHAIN)
    assert [s["type"] for s in job["spec"]["then"]] == ["upscale", "refine"]
    assert job["spec"]["then"][1]["prompt"] == job["spec"]["prompt"]  # blanks filled
    events = read_stream(fake.client, job["id"], timeout=60)
    assert events[-1].data["status"] == "succeeded"

    listed = artifacts(fake, job)
    keys = [a["key"] for a in listed]
    assert keys == [
        f"jobs/{job['id']}/{folder}/{item:03d}.png"
        for folder in ("00-generate", "01-upscale", "02-refine")
        for item in (0, 1)
    ]
    assert [(a["width"], a["height"]) for a in listed] == [(64, 64)] * 2 + [(128, 128)] * 4
    by_key = {a["key"]: a for a in listed}
    for artifact in listed[2:]:
        png = fake.client.get(artifact["url"]).content
        assert hashlib.sha256(png).hexdigest() == artifact["sha256"]
        receipt = read_receipt(png)
        assert receipt.parent is not None and receipt.chain_step is not None
        parent = by_key[receipt.parent.key]
        assert parent["sha256"] == receipt.parent.sha256
        assert parent["step_index"] == artifact["step_index"] - 1
        assert parent["item_index"] == artifact["item_index"] and receipt.seed == parent["seed"]
        assert receipt.chain_step.type == artifact["step_type"]
    assert read_receipt(fake.client.get(listed[0]["url"]).content).parent is None


def test_progress_is_one_bar_over_the_chain_and_every_step_event_names_its_step(
    fake: FakeServer,
) -> None:
    job = submit(fake.client, prompt=next(_names), count=2, steps=3, then=CHAIN)
    events = read_stream(fake.client, job["id"], timeout=60)
    figures = [e.data["progress"] for e in events if "progress" in e.data]
    assert figures == sorted(figures) and figures[-1] > 0.95
    assert fake.client.get(job["links"]["progress"]).json()["progress"] == 1.0
    stages = [(e.data["step_index"], e.data["stage"]) for e in events if e.type == "stage"]
    assert [s for s in stages if s[1] != "saving"] == [
        (0, "loading_model"), (0, "denoising"),
        (1, "loading_model"), (1, "upscaling"),
        (2, "loading_model"), (2, "denoising"),
    ]  # fmt: skip
    live = [e.data for e in events if e.type == "progress" and "step" in e.data]
    assert {d["step_index"] for d in live} == {0, 1, 2}
    for index, share in ((1, 1 / 3), (2, 2 / 3)):
        starts = [d["progress"] for d in live if d["step_index"] == index]
        assert min(starts) >= share - 1e-6
    logs = [e.data for e in durable(events) if e.type == "log"]
    assert any("upscaling 2 item(s) x2 to 128x128 by Lanczos" in d["message"] for d in logs)
    assert any("refining 2 item(s) at 128x128: strength 0.5, 2 steps" in d["message"] for d in logs)


def test_a_crash_in_the_last_step_resumes_there(fake: FakeServer) -> None:
    prompt = next(_names)
    fake.runner.plans = {prompt: Plan(Trouble.CRASH, at_step=1, at_item=1, in_step=2, times=1)}
    job = submit(fake.client, prompt=prompt, count=2, steps=3, then=CHAIN)
    events = read_stream(fake.client, job["id"], timeout=60)
    finished = fake.client.get(job["links"]["self"]).json()
    assert finished["status"] == "succeeded" and finished["attempts"] == 2
    # The first attempt stored both generated and both upscaled images and one refined
    # one; the second rendered only what was missing.
    assert [seed for p, seed in fake.runner.rendered if p == prompt] == finished["spec"][
        "item_seeds"
    ]
    logs = [e.data["message"] for e in durable(events) if e.type == "log"]
    assert sum("2 item(s) already stored; skipping them" in m for m in logs) == 2
    assert sum("1 item(s) already stored; skipping them" in m for m in logs) == 1
    assert len(artifacts(fake, job)) == 6


def test_cancel_within_a_step_keeps_the_steps_before(fake: FakeServer) -> None:
    slow = [{"type": "upscale", "scale": 2}, {"type": "refine", "strength": 1.0, "steps": 150}]
    job = submit(fake.client, prompt=next(_names), count=2, steps=2, then=slow)
    read_stream(
        fake.client,
        job["id"],
        until=lambda e: e.type == "progress" and e.data.get("step_index") == 2,
        timeout=60,
    )
    fake.client.post(job["links"]["cancel"])
    assert wait_for(fake.client, job["id"], {"canceled"}, timeout=30)["status"] == "canceled"
    kept = {(a["step_index"], a["item_index"]) for a in artifacts(fake, job)}
    assert {(0, 0), (0, 1), (1, 0), (1, 1)} <= kept and (2, 1) not in kept


@pytest.mark.parametrize(
    ("then", "field", "code"),
    [
        ([{"type": "blur"}], "then.0", "VALIDATION_ERROR"),
        ([{"scale": 2}], "then.0", "VALIDATION_ERROR"),
        ([{"type": "upscale", "model_id": "nope"}], "then.0.model_id", "MODEL_NOT_FOUND"),
        ([{"type": "upscale", "model_id": "tiny-sdxl"}], "then.0.model_id", "VALIDATION_ERROR"),
        (
            [{"type": "upscale", "scale": 8}, {"type": "upscale"}],
            "then.1.scale",
            "VALIDATION_ERROR",
        ),
        ([{"type": "refine", "strength": 0.1, "steps": 5}], "then.0.strength", "VALIDATION_ERROR"),
        ([{"type": "upscale"}] * 5, "then", "VALIDATION_ERROR"),
    ],
    ids=["unknown-type", "no-type", "no-upscaler", "not-an-upscaler", "too-big", "no-step", "long"],
)
def test_a_chain_that_cannot_run_is_refused_naming_the_step(
    fake: FakeServer, then: list[dict[str, Any]], field: str, code: str
) -> None:
    response = fake.client.post(
        "/v1/jobs", json={"prompt": "x", "width": 64, "height": 64, "then": then}
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == code and problem["errors"][0]["field"] == field, problem
    assert problem["errors"][0]["fix"]
