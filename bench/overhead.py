"""Throughput of the embedded service against bare diffusers, measured in one run.

20 generations (64x64, 4 steps, the tiny model) each way: through the HTTP API (submit,
wait on SSE, fetch the artifact, one job at a time) and through a bare diffusers loop in
this process. Rounds alternate so that machine noise falls on both sides alike.
Target: ratio (service / bare throughput) >= 0.90.
"""

from __future__ import annotations

import httpx

from bench.common import BarePipeline, EmbeddedServer, compare

JOBS = 20
ROUNDS = 4


def main() -> None:
    with EmbeddedServer() as server, httpx.Client(base_url=server.url, timeout=120) as client:
        service_s, bare_s = compare(client, BarePipeline(server.model_dir), JOBS, ROUNDS)
    service_rate, bare_rate = JOBS / service_s, JOBS / bare_s
    print(f"jobs: {JOBS} each way, 64x64, 4 steps, tiny SDXL, CPU")
    print(f"overhead_ms_per_job: {(service_s - bare_s) / JOBS * 1000:.1f}")
    print(f"service_images_per_s: {service_rate:.3f}")
    print(f"bare_images_per_s: {bare_rate:.3f}")
    print(f"ratio: {service_rate / bare_rate:.3f}")


if __name__ == "__main__":
    main()
