"""Batches through the API: one count=8 job against eight count=1 jobs, in one run.

64x64, 4 steps, the tiny model, the embedded server (micro-batches of up to 8), each job
created and followed over SSE to its end, its images fetched. Rounds alternate so that
machine noise falls on both sides alike. Target: ratio (seconds for eight single jobs /
seconds for one job of eight) >= 2.5; bare diffusers gets 2.9x on this CPU.
"""

from __future__ import annotations

import json
import os
import time

import httpx
from httpx_sse import connect_sse

from bench.common import EmbeddedServer

SPEC = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "steps": 4}
ITEMS = 8
ROUNDS = 4


def run(client: httpx.Client, count: int, seed: int) -> None:
    job = client.post("/v1/jobs", json={**SPEC, "count": count, "seed": seed}).json()
    with connect_sse(client, "GET", job["links"]["stream"]) as source:
        for event in source.iter_sse():
            if event.event == "done":
                assert json.loads(event.data)["status"] == "succeeded", event.data
                break
    for artifact in client.get(job["links"]["artifacts"]).json()["data"]:
        client.get(artifact["url"]).raise_for_status()


def main() -> None:
    os.environ["DREAMFORGE_MAX_BATCH_SIZE"] = str(ITEMS)
    with EmbeddedServer() as server, httpx.Client(base_url=server.url, timeout=120) as client:
        run(client, ITEMS, 0)  # warm up both ways
        run(client, 1, 0)
        batched_s = single_s = 0.0
        for round_ in range(ROUNDS):
            started = time.perf_counter()
            run(client, ITEMS, 1000 * round_)
            batched_s += time.perf_counter() - started
            started = time.perf_counter()
            for i in range(ITEMS):
                run(client, 1, 1000 * round_ + i)
            single_s += time.perf_counter() - started
    print(f"{ROUNDS} rounds of {ITEMS} images, 64x64, 4 steps, tiny SDXL, CPU")
    print(f"batched_s_per_image: {batched_s / (ROUNDS * ITEMS):.3f}")
    print(f"single_s_per_image: {single_s / (ROUNDS * ITEMS):.3f}")
    print(f"ratio: {single_s / batched_s:.2f}")


if __name__ == "__main__":
    main()
