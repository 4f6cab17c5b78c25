"""What the service itself costs: CPU seconds of the serving processes per job.

30 jobs of 30 steps (64x64, the tiny model), one at a time, each created, followed over SSE
to its end, read back and its image fetched, as a client does. Measured as CPU time (user +
system) of the processes that serve, not of the pipeline child that renders nor of the
client: CPU time barely moves with the noise of a shared machine, unlike wall time.

- embedded: the one `dreamforge serve` process;
- distributed: `dreamforge api` and `dreamforge worker` summed, on PostgreSQL, Redis and
  SeaweedFS (needs PostgreSQL and Redis on 127.0.0.1, as CI has them).

The 30 jobs run in 3 rounds of 10; the figure is the cheapest round's mean. On a shared
virtual machine, other tenants and preempted virtual CPUs only ever add to a process's CPU
time (rounds of the same code were seen 60% apart), so the lowest round is the closest
to what the code itself costs; all rounds are printed too.

Target: cpu_ms_per_job <= 15 (embedded).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil

from bench.common import EmbeddedServer, run_job
from bench.distributed import stack

JOBS = 30
ROUNDS = 3
WARM_UP = 3
SPEC = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "steps": 30}


def client_job(client: httpx.Client, seed: int) -> None:
    run_job(client, seed, SPEC, read_back=True)


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system time of these processes alone (children have their own)."""
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def cpu_ms_per_job(url: str, pids: Sequence[int]) -> list[float]:
    """CPU ms per job in each round of ``JOBS // ROUNDS`` jobs, after a warm-up."""
    rounds = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for seed in range(WARM_UP):
            client_job(client, seed)
        seeds = iter(range(WARM_UP, WARM_UP + JOBS))
        for _ in range(ROUNDS):
            before = cpu_seconds(pids)
            for _, seed in zip(range(JOBS // ROUNDS), seeds, strict=False):
                client_job(client, seed)
            rounds.append((cpu_seconds(pids) - before) / (JOBS // ROUNDS) * 1000)
    return rounds


def main() -> None:
    with EmbeddedServer() as server:
        assert server.process is not None
        embedded = cpu_ms_per_job(server.url, [server.process.pid])
    with (
        tempfile.TemporaryDirectory(prefix="dreamforge-bench-") as tmp,
        stack(Path(tmp), with_worker=True) as (url, _, pids),
    ):
        distributed = cpu_ms_per_job(url, pids)
    print(f"jobs: {JOBS} of {SPEC['steps']} steps in {ROUNDS} rounds, 64x64, tiny SDXL")
    print("embedded rounds (ms/job):", " ".join(f"{r:.1f}" for r in embedded))
    print("distributed rounds (ms/job, API + worker):", " ".join(f"{r:.1f}" for r in distributed))
    print(f"cpu_ms_per_job_distributed: {min(distributed):.1f}")
    print(f"cpu_ms_per_job: {min(embedded):.1f}")


if __name__ == "__main__":
    main()
