"""The main path through the embedded service: create, follow, fetch, read the receipt."""

from __future__ import annotations

import hashlib
import io
import json

import httpx
from PIL import Image

from dreamforge.artifacts.receipts import read_png_text, read_receipt
from tests.conftest import LiveServer
from tests.helpers import durable, read_stream, run_to_end, submit, wait_for


def test_a_job_runs_from_submit_to_downloaded_image(live: LiveServer) -> None:
    job, events = run_to_end(live.client, prompt="a lighthouse at dawn", seed=7)

    assert job["status"] == "succeeded"
    assert job["progress"] == 1.0
    assert job["started_at"] and job["finished_at"] and job["error"] is None
    assert job["spec"]["width"] == 64 and job["spec"]["steps"] == 4  # the model's defaults
    assert events[-1].type == "done" and events[-1].data["status"] == "succeeded"

    listing = live.client.get(job["links"]["artifacts"]).json()["data"]
    assert len(listing) == 1
    artifact = listing[0]
    assert artifact["key"] == f"jobs/{job['id']}/00-generate/000.png"
    assert (artifact["width"], artifact["height"], artifact["seed"]) == (64, 64, 7)

    png = httpx.get(artifact["url"]).raise_for_status()
    assert png.headers["content-type"] == "image/png"
    assert hashlib.sha256(png.content).hexdigest() == artifact["sha256"]
    assert len(png.content) == artifact["size_bytes"]
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)


def test_the_png_carries_an_a1111_and_a_full_receipt(live: LiveServer) -> None:
    job, _ = run_to_end(
        live.client,
        prompt="a cat",
        negative_prompt="dogs",
        seed=99,
        steps=3,
        guidance_scale=6.5,
        scheduler="euler_a",
    )
    artifact = live.client.get(job["links"]["artifacts"]).json()["data"][0]
    png = httpx.get(artifact["url"]).content
    model = live.client.get("/v1/models/tiny-sdxl").json()

    parameters = read_png_text(png)["parameters"].splitlines()
    assert parameters[0] == "a cat"
    assert parameters[1] == "Negative prompt: dogs"
    assert parameters[2].startswith(
        "Steps: 3, Sampler: Euler a, CFG scale: 6.5, Seed: 99, Size: 64x64, "
        f"Model hash: {model['sha256'][:10]}, Model: tiny-sdxl"
    )

    receipt = read_receipt(png)
    assert receipt.spec.model_dump(mode="json") == job["spec"]
    assert receipt.seed == 99
    assert receipt.model.sha256 == model["sha256"]
    assert receipt.device == "cpu" and receipt.dtype == "float32"
    assert set(receipt.versions) >= {"diffusers", "torch", "transformers", "dreamforge"}


def test_a_created_job_is_located_by_its_self_link(live: LiveServer) -> None:
    response = live.client.post("/v1/jobs", json={"prompt": "located"})
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == job["links"]["self"]
    assert job["links"]["self"] == f"{live.url}/v1/jobs/{job['id']}"
    assert live.client.get(response.headers["location"]).json()["id"] == job["id"]
    wait_for(live.client, job["id"], {"succeeded"})


def test_an_omitted_seed_is_drawn_and_recorded(live: LiveServer) -> None:
    first = submit(live.client)
    second = submit(live.client)
    assert first["spec"]["seed"] != second["spec"]["seed"]
    done = wait_for(live.client, second["id"], {"succeeded"})
    artifact = live.client.get(done["links"]["artifacts"]).json()["data"][0]
    assert artifact["seed"] == second["spec"]["seed"]


def test_progress_rises_step_by_step_to_one(live: LiveServer) -> None:
    # 30 steps: reported at most every progress_interval_s, several come even to a stream
    # that connects after the first.
    job, events = run_to_end(live.client, steps=30)
    stepped = [e.data for e in events if e.type == "progress" and "step" in e.data]
    steps = [data["step"] for data in stepped]
    # Live only: a stream that connects late misses the first steps, and a step that
    # follows the last report too soon is left to the next; the last step always comes.
    assert steps == sorted(set(steps)) and steps[-1] == 30
    progress = [data["progress"] for data in stepped]
    assert progress == sorted(progress) and 0 < progress[0] < progress[-1] < 1
    snapshot = live.client.get(job["links"]["progress"]).json()
    assert snapshot["progress"] == 1.0 and snapshot["status"] == "succeeded"
    assert abs(sum(snapshot["stage_weights"].values()) - 1.0) < 1e-9


def test_jobs_are_listed_newest_first_with_cursor_pages_and_a_status_filter(
    live: LiveServer,
) -> None:
    ids = [submit(live.client)["id"] for _ in range(3)]
    for job_id in ids:
        wait_for(live.client, job_id, {"succeeded"})
    first = live.client.get("/v1/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2]
    second = live.client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]})
    assert second.json()["data"][0]["id"] == ids[0]

    seen, cursor = [], None
    while True:
        page = live.client.get(
            "/v1/jobs", params={"limit": 3, "cursor": cursor} if cursor else {"limit": 3}
        ).json()
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) and set(ids) <= set(seen)

    succeeded = live.client.get("/v1/jobs", params={"status": "succeeded", "limit": 100})
    assert {j["status"] for j in succeeded.json()["data"]} == {"succeeded"}
    assert set(ids) <= {j["id"] for j in succeeded.json()["data"]}
    failed = live.client.get("/v1/jobs", params={"status": "failed", "limit": 100}).json()
    assert not set(ids) & {j["id"] for j in failed["data"]}


def test_logs_are_ndjson_with_tail_and_since(live: LiveServer) -> None:
    job, _ = run_to_end(live.client)
    response = live.client.get(job["links"]["logs"])
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert len(lines) >= 5
    assert all({"seq", "ts", "level", "message", "stage"} <= set(line) for line in lines)
    assert lines[-1]["message"].startswith("finished in")

    tail = live.client.get(job["links"]["logs"], params={"tail": 2}).text.splitlines()
    assert [json.loads(t)["seq"] for t in tail] == [line["seq"] for line in lines[-2:]]

    after = lines[2]["seq"]
    since_seq = live.client.get(job["links"]["logs"], params={"since": after}).text.splitlines()
    assert [json.loads(t)["seq"] for t in since_seq] == [
        line["seq"] for line in lines if line["seq"] > after
    ]

    cut = lines[2]["ts"]
    since_ts = live.client.get(job["links"]["logs"], params={"since": cut}).text.splitlines()
    expected = [line["seq"] for line in lines if line["ts"] > cut]
    assert [json.loads(t)["seq"] for t in since_ts] == expected and expected


def test_same_spec_and_seed_give_identical_bytes(live: LiveServer) -> None:
    spec = {"prompt": "golden", "seed": 1234, "steps": 4, "width": 64, "height": 64}
    digests = []
    for _ in range(2):
        job, _ = run_to_end(live.client, **spec)
        digests.append(live.client.get(job["links"]["artifacts"]).json()["data"][0]["sha256"])
    assert digests[0] == digests[1]


def test_health_and_readiness(live: LiveServer) -> None:
    assert live.client.get("/healthz").json() == {"status": "ok"}
    ready = live.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "queue": "ok", "storage": "ok"}


def test_models_are_listed_with_their_defaults(live: LiveServer) -> None:
    models = live.client.get("/v1/models").json()["data"]
    tiny = next(m for m in models if m["id"] == "tiny-sdxl")
    assert tiny["status"] == "ready" and len(tiny["sha256"]) == 64
    assert tiny["defaults"]["width"] == 64
    missing = live.client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["code"] == "MODEL_NOT_FOUND"


def test_stream_of_a_finished_job_replays_everything_and_closes(live: LiveServer) -> None:
    job, live_events = run_to_end(live.client)
    replay = read_stream(live.client, job["id"])
    assert replay == durable(live_events)  # progress was live only
    assert [e.id for e in replay] == list(range(1, len(replay) + 1))
