"""What a batch window buys a burst and costs a lone job, in one run.

Two embedded servers with the tiny model and micro-batches of up to 8, one with
DREAMFORGE_BATCH_WINDOW_S=0 (the default) and one with the window under test; rounds
alternate between them so that machine noise falls on both alike. Each round sends a
burst of 16 jobs at once (16 client threads, as bench/gpu_runner.py does), then jobs one
at a time. A burst's device batches are counted from the jobs' logs ("in one device batch
with N other job(s)"), and how long it took to arrive from their creation times.

    python -m bench.batch_window                 # a 50 ms window against none
    python -m bench.batch_window --window 0.1    # another window
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import httpx

from bench.common import Burst, EmbeddedServer, run_job_read, send_burst

SPEC = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "steps": 8}
BURST = 16
LONE = 4  # jobs one at a time, a round
ROUNDS = 4


class Side:
    """One server, and what was measured through it."""

    def __init__(self, client: httpx.Client, pool: ThreadPoolExecutor) -> None:
        self.client, self.pool = client, pool
        self.bursts: list[Burst] = []
        self.lone_s: list[float] = []

    def burst(self, round_: int) -> None:
        seeds = range(round_ * BURST, (round_ + 1) * BURST)
        self.bursts.append(send_burst(self.client, self.pool, seeds, SPEC))

    def median_burst_s(self) -> float:
        return statistics.median(burst.seconds for burst in self.bursts)

    def mean_batches(self) -> float:
        return statistics.mean(burst.batches for burst in self.bursts)

    def lone(self, round_: int) -> None:
        for seed in range(LONE):
            started = time.perf_counter()
            run_job_read(self.client, 10_000 + round_ * LONE + seed, SPEC)
            self.lone_s.append(time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=0.05, help="seconds (default 0.05)")
    window = parser.parse_args().window
    env = {"DREAMFORGE_MAX_BATCH_SIZE": "8"}
    with ExitStack() as stack, ThreadPoolExecutor(BURST) as pool:
        sides = []
        for seconds in (0.0, window):
            server = stack.enter_context(
                EmbeddedServer(env={**env, "DREAMFORGE_BATCH_WINDOW_S": str(seconds)})
            )
            client = stack.enter_context(httpx.Client(base_url=server.url, timeout=300))
            run_job_read(client, 0, SPEC)  # warm up
            sides.append(Side(client, pool))
        for round_ in range(ROUNDS):
            for side in sides if round_ % 2 == 0 else reversed(sides):
                side.burst(round_)
                side.lone(round_)
    none, some = sides
    print(f"{ROUNDS} rounds: a burst of {BURST} jobs and {LONE} jobs one at a time, each way;")
    print("64x64, 8 steps, tiny SDXL, micro-batches of up to 8; medians")
    print(f"burst_s_window_0: {none.median_burst_s():.3f}")
    print(f"burst_s_window_{window:g}: {some.median_burst_s():.3f}")
    print(f"lone_job_s_window_0: {statistics.median(none.lone_s):.3f}")
    print(f"lone_job_s_window_{window:g}: {statistics.median(some.lone_s):.3f}")
    spread_ms = 1000 * statistics.median(b.spread_s for b in none.bursts + some.bursts)
    print(f"burst_arrival_spread_ms: {spread_ms:.0f}")
    print(f"device_batches_window_0: {none.mean_batches():.2f}")
    print(f"device_batches_window_{window:g}: {some.mean_batches():.2f}")
    burst_speedup = none.median_burst_s() / some.median_burst_s()
    lone_cost_ms = 1000 * (statistics.median(some.lone_s) - statistics.median(none.lone_s))
    print(f"burst_speedup: {burst_speedup:.2f}")
    print(f"lone_job_cost_ms: {lone_cost_ms:.0f}")


if __name__ == "__main__":
    main()
