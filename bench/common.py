"""What the benchmarks share: a tiny model, a served Dream Forge, a bare diffusers loop."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse

SPEC = {"prompt": "a lighthouse at dawn", "width": 64, "height": 64, "steps": 4}


def run_job(
    client: httpx.Client, seed: int, spec: dict[str, Any] = SPEC, read_back: bool = False
) -> bytes:
    """Submit, wait for the terminal event on SSE (and read the job back), fetch the
    image: what a client does."""
    return run_job_read(client, seed, spec, read_back)[1]


def run_job_read(
    client: httpx.Client, seed: int, spec: dict[str, Any] = SPEC, read_back: bool = False
) -> tuple[dict[str, Any], bytes]:
    """``run_job``, and the job as it was created (its links)."""
    job = client.post("/v1/jobs", json={**spec, "seed": seed}).raise_for_status().json()
    with connect_sse(client, "GET", job["links"]["stream"]) as source:
        for event in source.iter_sse():
            if event.event == "done":
                assert json.loads(event.data)["status"] == "succeeded", event.data
                break
    if read_back:
        client.get(job["links"]["self"]).raise_for_status()
    artifact = client.get(job["links"]["artifacts"]).json()["data"][0]
    return job, client.get(artifact["url"]).raise_for_status().content


_BATCH_NOTE = re.compile(r"in one device batch with (\d+) other job")


@dataclass(frozen=True)
class Burst:
    """Jobs sent at once, each followed to its end and its image read."""

    seconds: float  # from the first job's sending to the last image read
    done: list[tuple[dict[str, Any], bytes]]  # each job as created, and its image
    batches: float  # device batches they were rendered in
    spread_s: float  # from the first job queued to the last: the window that gathers them


def send_burst(
    client: httpx.Client, pool: ThreadPoolExecutor, seeds: Iterable[int], spec: dict[str, Any]
) -> Burst:
    """One job a seed, sent from ``pool``'s threads at once."""
    started = time.perf_counter()
    done = list(pool.map(lambda seed: run_job_read(client, seed, spec), seeds))
    seconds = time.perf_counter() - started
    jobs = [job for job, _ in done]
    return Burst(seconds, done, _device_batches(client, jobs), _arrival_spread_s(jobs))


def _device_batches(client: httpx.Client, jobs: list[dict[str, Any]]) -> float:
    """From the jobs' logs ("in one device batch with N other job(s)"): each job's share
    of its batch, summed."""
    shares = 0.0
    for job in jobs:
        found = _BATCH_NOTE.search(client.get(job["links"]["logs"]).text)
        shares += 1 / (int(found[1]) + 1) if found else 1.0
    return shares


def _arrival_spread_s(jobs: list[dict[str, Any]]) -> float:
    created = [datetime.fromisoformat(job["created_at"]) for job in jobs]
    return (max(created) - min(created)).total_seconds()


class BarePipeline:
    """The same model and spec through diffusers alone, as a user would call it."""

    def __init__(self, model_dir: Path) -> None:
        import torch
        from diffusers import StableDiffusionXLPipeline

        self._torch = torch
        self.pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)

    def generate(self, seed: int) -> Any:
        generator = self._torch.Generator().manual_seed(seed)
        return self.pipe(
            prompt=SPEC["prompt"],
            width=SPEC["width"],
            height=SPEC["height"],
            num_inference_steps=SPEC["steps"],
            generator=generator,
        ).images[0]


def compare(
    client: httpx.Client, bare: BarePipeline, jobs: int, rounds: int
) -> tuple[float, float]:
    """Seconds for ``jobs`` generations through the service and through bare diffusers.

    Both are warmed up first; rounds alternate, so that machine noise falls on both alike.
    """
    run_job(client, seed=0)
    bare.generate(seed=0)
    service_s = bare_s = 0.0
    per_round = jobs // rounds
    for round_ in range(rounds):
        seeds = range(1 + round_ * per_round, 1 + (round_ + 1) * per_round)
        started = time.perf_counter()
        for seed in seeds:
            run_job(client, seed)
        service_s += time.perf_counter() - started
        started = time.perf_counter()
        for seed in seeds:
            bare.generate(seed)
        bare_s += time.perf_counter() - started
    return service_s, bare_s


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedServer:
    """`dreamforge serve` on ``data_dir`` (by default a temporary one, where it makes the
    tiny model), with ``env`` added to its environment and its log in ``log`` (by default
    nowhere)."""

    def __init__(
        self,
        data_dir: Path | None = None,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        ready_within_s: float = 120,
    ) -> None:
        self.tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self.tmp = tempfile.TemporaryDirectory(prefix="dreamforge-bench-")
            data_dir = Path(self.tmp.name)
        self.data_dir = data_dir
        self.env = env or {}
        self.log = log
        self.ready_within_s = ready_within_s
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0  # perf_counter() when the process was started

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models" / "tiny-sdxl"

    def __enter__(self) -> EmbeddedServer:
        env = {**os.environ, "DREAMFORGE_DATA_DIR": str(self.data_dir), **self.env}
        self.started = time.perf_counter()
        with self.log.open("ab") if self.log else open(os.devnull, "wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dreamforge.cli", "serve", "--port", str(self.port)],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        while not self._ready():
            if self.process.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"dreamforge serve exited with {self.process.returncode}")
            if time.perf_counter() - self.started > self.ready_within_s:
                self.__exit__()
                raise RuntimeError("dreamforge serve did not become ready")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
        if self.tmp is not None:
            self.tmp.cleanup()


def render_request(model_dir: Path, size: int, steps: int, count: int = 1) -> Any:
    """A runner's request for ``count`` guided images of ``size`` squared (seeds 1, 2, …,
    one micro-batch) from the diffusers folder ``model_dir`` (model id ``bench``), as the
    worker would send it."""
    from dreamforge.domain.jobs import JobSpec, Scheduler
    from dreamforge.runners.protocol import ItemToRender, ModelRef, RenderRequest

    seeds = tuple(range(1, count + 1))
    spec = JobSpec(
        prompt="a lighthouse at dawn",
        negative_prompt="",
        width=size,
        height=size,
        steps=steps,
        guidance_scale=5.0,
        scheduler=Scheduler.EULER,
        seed=1,
        count=count,
        model_id="bench",
        item_seeds=seeds,
    )
    model = ModelRef("bench", str(model_dir), "diffusers", "b" * 64, "bench")
    items = tuple(ItemToRender(i, seed) for i, seed in enumerate(seeds))
    return RenderRequest(spec, model, items, max_batch=count)


def print_figures(dry_run: bool, figures: dict[str, float]) -> None:
    """A GPU benchmark's last lines: the device, torch, then ``name: value`` a figure."""
    import torch

    print(f"device: {'cpu (dry run)' if dry_run else torch.cuda.get_device_name()}")
    print(f"torch: {torch.__version__}")
    for name, value in figures.items():
        print(f"{name}: {value:.2f}")


STARTED = time.perf_counter()  # this module is imported as a benchmark starts


def elapsed() -> float:
    """Seconds since the benchmark started."""
    return time.perf_counter() - STARTED


def say(line: str) -> None:
    """A progress line, stamped with the seconds since the benchmark started."""
    print(f"[{elapsed():5.0f} s] {line}", flush=True)
