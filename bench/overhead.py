"""Throughput of the embedded service against bare diffusers, measured in one run.

20 generations (64x64, 4 steps, the tiny model) each way: through the HTTP API (submit,
wait on SSE, fetch the artifact, one job at a time) and through a bare diffusers loop in
this process. Rounds alternate so that machine noise falls on both sides alike.
Target: ratio (service / bare throughput) >= 0.90.
"""

from __future__ import annotations

import time

import httpx

from bench.common import BarePipeline, EmbeddedServer, run_job

JOBS = 20
ROUNDS = 4


def main() -> None:
    with EmbeddedServer() as server, httpx.Client(base_url=server.url, timeout=120) as client:
        bare = BarePipeline(server.model_dir)
        run_job(client, seed=0)  # warm up: the runner loads the model once
        bare.generate(seed=0)
        service_s = bare_s = 0.0
        per_round = JOBS // ROUNDS
        for round_ in range(ROUNDS):
            seeds = range(1 + round_ * per_round, 1 + (round_ + 1) * per_round)
            started = time.perf_counter()
            for seed in seeds:
                run_job(client, seed)
            service_s += time.perf_counter() - started
            started = time.perf_counter()
            for seed in seeds:
                bare.generate(seed)
            bare_s += time.perf_counter() - started
    service_rate, bare_rate = JOBS / service_s, JOBS / bare_s
    print(f"jobs: {JOBS} each way, 64x64, 4 steps, tiny SDXL, CPU")
    print(f"overhead_ms_per_job: {(service_s - bare_s) / JOBS * 1000:.1f}")
    print(f"service_images_per_s: {service_rate:.3f}")
    print(f"bare_images_per_s: {bare_rate:.3f}")
    print(f"ratio: {service_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
