"""The AUTOMATIC1111 API subset, fed the requests A1111's own documentation shows (the wiki's
minimal example; a full body as its /docs page lists the fields), read back as an A1111
client reads them: base64 PNGs and an ``info`` JSON string."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx

from dreamforge.artifacts.receipts import read_receipt
from tests.conftest import LiveServer
from tests.test_lifecycle import FakeServer, fake  # noqa: F401 - the fixture

CAPTURED = Path(__file__).parent / "a1111"


def captured(name: str) -> dict[str, Any]:
    return json.loads((CAPTURED / name).read_text())  # type: ignore[no-any-return]


def test_the_wikis_example_gets_an_image_and_its_info(live: LiveServer) -> None:
    response = live.client.post("/sdapi/v1/txt2img", json=captured("wiki_txt2img.json"))
    assert response.status_code == 200, response.text
    answer = response.json()
    (image,) = answer["images"]
    png = base64.b64decode(image)
    receipt = read_receipt(png)
    info = json.loads(answer["info"])
    assert info["seed"] == info["all_seeds"][0] == receipt.seed
    assert info["steps"] == receipt.spec.steps == 5 and info["prompt"] == "puppy dog"
    assert "Steps: 5" in info["infotexts"][0] and f"Seed: {receipt.seed}" in info["infotexts"][0]
    assert answer["parameters"]["prompt"] == "puppy dog"
    job = live.client.get(f"/v1/jobs/{response.headers['X-Dreamforge-Job-Id']}").json()
    assert job["status"] == "succeeded" and job["spec"]["prompt"] == "puppy dog"


def test_a_full_body_picks_model_sampler_seeds_and_batches(fake: FakeServer) -> None:  # noqa: F811
    client = fake.client
    models = client.get("/sdapi/v1/sd-models").json()
    (tiny,) = [m for m in models if m["model_name"] == "tiny-sdxl"]
    assert tiny["title"] == f"tiny-sdxl [{tiny['hash']}]" and tiny["sha256"].startswith(
        tiny["hash"]
    )
    assert "Euler a" in [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == tiny["title"]

    body = captured("full_txt2img.json")
    body["override_settings"]["sd_model_checkpoint"] = tiny["title"]
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    receipts = [read_receipt(base64.b64decode(i)) for i in answer["images"]]
    assert [r.seed for r in receipts] == [1234, 1235, 1236, 1237]  # batch_size x n_iter
    assert {(r.spec.width, r.spec.height, r.spec.scheduler.value) for r in receipts} == {
        (64, 64, "euler_a")
    }
    info = json.loads(answer["info"])
    assert info["all_seeds"] == [1234, 1235, 1236, 1237] and info["sampler_name"] == "Euler a"
    assert info["cfg_scale"] == 7 and info["sd_model_hash"] == tiny["hash"]
    assert info["negative_prompt"] == "blurry, lowres" and len(info["infotexts"]) == 4


def test_what_would_change_the_image_unseen_is_refused_by_name(fake: FakeServer) -> None:  # noqa: F811
    def refused(**changes: Any) -> httpx.Response:
        response = fake.client.post("/sdapi/v1/txt2img", json={"prompt": "x", **changes})
        assert response.status_code == 422, response.text
        return response

    assert refused(enable_hr=True).json()["errors"][0]["field"] == "enable_hr"
    sampler = refused(sampler_name="DPM++ 2M Karras").json()["errors"][0]
    assert sampler["field"] == "sampler_name" and "Euler a" in sampler["fix"]
    assert refused(scheduler="Karras").json()["errors"][0]["field"] == "scheduler"
    assert refused(batch_size=60, n_iter=2).json()["errors"][0]["field"] == "batch_size"
    unknown = refused(override_settings={"sd_model_checkpoint": "nope [0123456789]"})
    assert unknown.json()["code"] == "MODEL_NOT_FOUND"
    assert unknown.json()["errors"][0]["field"] == "override_settings.sd_model_checkpoint"
