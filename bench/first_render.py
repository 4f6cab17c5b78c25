"""Time to first render: from a client's POST to the first image it can fetch, and from
starting `dreamforge serve` to its first image.

30 jobs, one at a time, on the embedded profile with the tiny model (64x64, 4 steps): the
clock runs from sending `POST /v1/jobs` to reading the first `artifact` event on the job's
stream, which is when the image is stored and its URL can be listed. It measures what a
client waits for, service and model together: on this CPU the tiny model's steps dominate;
on a GPU with a real model, the queue, load and denoising stages do (see /metrics).

Then three cold starts on the same data dir (the default model already made): from
starting the process to the first job's `artifact` event, the job sent as soon as the API
answers: the process's imports, the pipeline process's start and the model's load.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx
from httpx_sse import connect_sse

from bench.common import EmbeddedServer

JOBS = 30
WARM_UP = 3
SPEC = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "steps": 4}


def first_render_s(client: httpx.Client, seed: int) -> float:
    started = time.perf_counter()
    job = client.post("/v1/jobs", json={**SPEC, "seed": seed}).raise_for_status().json()
    with connect_sse(client, "GET", job["links"]["stream"]) as source:
        for event in source.iter_sse():
            if event.event == "artifact":
                return time.perf_counter() - started
            if event.event == "done":
                raise RuntimeError(f"job {job['id']} ended without an image: {event.data}")
    raise RuntimeError("the stream ended early")


def cold_start_s(data_dir: Path) -> float:
    started = time.perf_counter()
    with EmbeddedServer(data_dir) as s, httpx.Client(base_url=s.url, timeout=120) as client:
        first_render_s(client, 0)
        return time.perf_counter() - started


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dreamforge-bench-") as tmp:
        data_dir = Path(tmp)
        with (
            EmbeddedServer(data_dir) as server,
            httpx.Client(base_url=server.url, timeout=120) as client,
        ):
            for seed in range(WARM_UP):
                first_render_s(client, seed)
            times = sorted(first_render_s(client, WARM_UP + i) for i in range(JOBS))
        starts = [cold_start_s(data_dir) for _ in range(3)]
    p95 = times[int(0.95 * (len(times) - 1))]
    print(f"jobs: {JOBS}, one at a time, 64x64, {SPEC['steps']} steps, tiny SDXL, embedded")
    print(f"first_render_p50_ms: {statistics.median(times) * 1000:.0f}")
    print(f"first_render_p95_ms: {p95 * 1000:.0f}")
    print(f"cold_start_to_first_image_s: {statistics.median(starts):.1f}")


if __name__ == "__main__":
    main()
