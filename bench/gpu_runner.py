"""The fast runner on a GPU: compiled against eager (and channels-last against the default
layout), the service (one job at a time, and a burst of 16 jobs of one shape, batched
across jobs; then both again with a 100 ms batch window) against a bare diffusers loop,
compile time with a cold and a warm cache, and the first image from process start.

The model has SDXL's real shapes and random weights in fp16, built here (nothing is
downloaded) and saved to a temporary folder that the service registers. Targets on an
H100/H200-class card: compiled >= 2x eager, burst >= 3x a bare one-at-a-time loop at
512x512/8 steps, first image <= 12 s from process start at 1024x1024/30 with a warm cache.

A lent GPU comes for minutes, so the run is cut into phases, most wanted first; each
prints what it measured as soon as it has it, a phase that fails says why and the next
one runs, and ``--budget-s N`` skips the phases not started after N seconds. The figures
come last, ``name: value`` a line, those of skipped phases left out.

    python -m bench.gpu_runner                  # needs CUDA; without it, says so and exits 0
    python -m bench.gpu_runner --budget-s 480   # as above, phases after 480 s skipped
    python -m bench.gpu_runner --dry-run        # the tiny model on the CPU: checks the script
    python -m bench.gpu_runner --logs DIR       # keeps the services' logs in DIR
    python -m bench.gpu_runner --scope unet     # the whole UNet compiled (default: regions)
    python -m bench.gpu_runner --vae            # the VAE decoder compiled too
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench.common import (
    Burst,
    EmbeddedServer,
    elapsed,
    print_figures,
    render_request,
    run_job_read,
    say,
    send_burst,
)

DRY = "--dry-run" in sys.argv
SCOPE = sys.argv[sys.argv.index("--scope") + 1] if "--scope" in sys.argv else "regions"
VAE = "--vae" in sys.argv
LARGE = (64, 2) if DRY else (1024, 30)
SMALL = (64, 2) if DRY else (512, 8)
BURST = 16
# How long a phase goes on for its shapes to run compiled (jobs run eager meanwhile).
COMPILE_WAIT_S = 120 if DRY else 300
# The compile's note: its seconds in all, and the graphs of its last part (the one in the
# runner's process, which jobs wait for; the helper process's part, if any, came first).
_NOTE = re.compile(
    r"compiled .+? for \S+ x\d+(?: \(guided\))? in ([\d.]+)s.*"
    r"\((\d+) graphs compiled, (\d+) from the cache\); images"
)
_HERE = re.compile(r"then here in ([\d.]+)s")  # after a helper process's compile


def compile_figures(note: re.Match[str]) -> dict[str, float]:
    """Seconds to compile in all, the seconds jobs waited for it, and its last part's graphs."""
    here = _HERE.search(note[0])
    return {
        "compile_s": float(note[1]),
        "compile_wait_s": float(here[1]) if here else float(note[1]),
        "graphs": int(note[2]),
        "cached": int(note[3]),
    }


# In the pipeline's own process -------------------------------------------------------


def child(model_dir: str, cache: str, size: str, steps: str, renders: str) -> None:
    """Images/s of one image at a time through the runner at one shape: eager in the
    default layout and channels-last, then compiled (the compile's own time from its note)
    in both layouts. Prints them as one JSON object."""
    import torch

    from dreamforge.runners.compile_options import CompileOptions, CompileScope
    from dreamforge.runners.compiled import CompiledModules
    from dreamforge.runners.device import select_device
    from dreamforge.runners.protocol import ItemRendered, RunnerMessage, RunnerNote
    from dreamforge.runners.sdxl import SdxlRunner

    device = select_device("cpu" if DRY else None)
    runner = SdxlRunner(device)
    request = render_request(Path(model_dir), int(size), int(steps))
    notes: list[str] = []
    pngs: list[bytes] = []

    def emit(message: RunnerMessage) -> None:
        if isinstance(message, RunnerNote):
            notes.append(message.message)
        elif isinstance(message, ItemRendered):
            pngs.append(message.png)

    def sync() -> None:
        if device.device.type == "cuda":
            torch.cuda.synchronize()

    def render() -> None:
        runner.generate(request, emit, bool)

    def images_per_s() -> float:
        sync()
        started = time.perf_counter()
        for _ in range(int(renders)):
            render()
        sync()
        return int(renders) / (time.perf_counter() - started)

    def layout(memory_format: torch.memory_format) -> None:
        pipe = runner._resident.get("bench", request.model.sha256).pipe  # type: ignore[union-attr]
        # The compiled twin holds the same parameter objects, so it follows.
        pipe.unet.to(memory_format=memory_format)
        pipe.vae.to(memory_format=memory_format)

    render()  # loads, and warms the eager kernels up
    figures = {"eager": images_per_s()}
    eager_png = pngs[-1]
    layout(torch.channels_last)
    render()
    figures["eager_channels_last"] = images_per_s()
    layout(torch.contiguous_format)
    scope: CompileScope = "unet" if SCOPE == "unet" else "regions"
    runner.compiled = CompiledModules(CompileOptions("on", scope, VAE, Path(cache)))
    render()  # still eager: asks for this shape's compile, which starts when it is done
    runner.compiled.wait()
    render()  # compiled; brings the compile's note
    found = _NOTE.search(" ".join(notes))  # among any others (a wait, say)
    assert found, notes
    figures |= compile_figures(found)
    figures["compiled"] = images_per_s()
    figures |= differences(eager_png, pngs[-1])  # the same seed, eager and compiled
    layout(torch.channels_last)
    render()
    figures["compiled_channels_last"] = images_per_s()
    print(json.dumps(figures))


def differences(a: bytes, b: bytes) -> dict[str, float]:
    """How far two images of the same size are apart, in levels of 255 per channel."""
    import io

    import numpy as np
    from PIL import Image

    first, second = (np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16) for png in (a, b))
    apart = np.abs(first - second)
    return {"max_levels_apart": float(apart.max()), "mean_levels_apart": float(apart.mean())}


def timed_renders(model_dir: Path, cache: Path, size: int, steps: int) -> dict[str, float]:
    """``child`` in a process of its own: inductor reads its cache dir at import."""
    renders = 2 if DRY else (3 if size >= 1024 else 6)
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_runner", "--child", str(model_dir), str(cache),
         str(size), str(steps), str(renders), "--scope", SCOPE, *(["--vae"] if VAE else []),
         *(["--dry-run"] if DRY else [])],
        env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")},
        stdout=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# The service -------------------------------------------------------------------------


@contextmanager
def serving(data: Path, env: dict[str, str], log: Path) -> Iterator[tuple[httpx.Client, float]]:
    """`dreamforge serve` on ``data``: a client for it, and when the process was started.
    Its log goes to ``log``, whose end is printed if the service fails."""
    try:
        with EmbeddedServer(data, env, log, ready_within_s=300) as server:
            ready_s = time.perf_counter() - server.started
            say(f"dreamforge serve ready {ready_s:.1f} s after its start")
            with httpx.Client(base_url=server.url, timeout=900) as client:
                yield client, server.started
    except BaseException:
        print(log.read_text(errors="replace")[-3000:], flush=True)
        raise


def over(budget: float | None) -> bool:
    """Whether the run's time budget is spent."""
    return budget is not None and elapsed() > budget


def compiled(png: bytes) -> bool:
    from dreamforge.artifacts.receipts import read_receipt

    return read_receipt(png).compiled


def burst_figures(
    client: httpx.Client, bare_per_image: float, budget: float | None
) -> dict[str, float]:
    """A burst of 16 jobs, and jobs one at a time, at 512x512/8, once their shapes run
    compiled (or the budget is spent: the share of compiled images says which): against
    the bare loop's time per image."""
    size, steps = SMALL
    spec = {"prompt": "a lighthouse at dawn", "width": size, "height": size, "steps": steps}
    figures: dict[str, float] = {}
    with ThreadPoolExecutor(BURST) as pool:

        def burst() -> tuple[Burst, int]:
            sent = send_burst(client, pool, range(BURST), spec)
            warm = sum(compiled(png) for _, png in sent.done)
            say(f"burst of {BURST}: {sent.seconds:.2f} s, {sent.batches:.0f} batches, "
                f"{warm} compiled, arrived over {1000 * sent.spread_s:.0f} ms")  # fmt: skip
            return sent, warm

        # The shapes' first batches run eager while a helper process compiles them.
        until = time.perf_counter() + COMPILE_WAIT_S
        while True:
            warm = burst()[1]
            if warm == BURST or time.perf_counter() > until or over(budget):
                break
        # Measured: three more, the median. A burst may split otherwise than the last one
        # (1 + 8 + 7, or 8 + 8), into batch sizes whose shape is not compiled yet.
        measured = [burst() for _ in range(3)]
        figures |= {
            "burst": bare_per_image * BURST / statistics.median(b.seconds for b, _ in measured),
            "burst_compiled": statistics.mean(warm for _, warm in measured) / BURST,
            "burst_batches": statistics.mean(b.batches for b, _ in measured),
        }
    until = time.perf_counter() + COMPILE_WAIT_S
    seed = 0
    while not compiled(run_job_read(client, seed, spec)[1]):  # until one at a time is
        seed += 1
        if time.perf_counter() > until or over(budget):
            break
    started, count, warm = time.perf_counter(), 4, 0
    for seed in range(count):
        warm += compiled(run_job_read(client, seed, spec)[1])
    single = (time.perf_counter() - started) / count
    say(f"one at a time: {single:.3f} s a job, {warm} of {count} compiled")
    return figures | {"single": bare_per_image / single}


def first_image_figures(client: httpx.Client, started: float) -> dict[str, float]:
    """The first image at 1024x1024/30 from process start (compiled or not), then jobs of
    that shape until one's log has the compile's note (the service starts that compile
    when the first job is done, or once idle after preloading the model), which says how
    long the warm cache took."""
    size, steps = LARGE
    spec = {"prompt": "first", "width": size, "height": size, "steps": steps}
    job, png = run_job_read(client, 1, spec)
    first = time.perf_counter() - started
    figures = {"first_image": first, "first_image_compiled": float(compiled(png))}
    say(f"first image {first:.1f} s after the process started; its log:")
    log = client.get(job["links"]["logs"]).raise_for_status().text
    for line in log.splitlines():
        entry = json.loads(line)
        print(f"    {entry['ts']} {entry['message']}", flush=True)
    until = time.perf_counter() + COMPILE_WAIT_S
    seed = 2
    while True:
        # Its own shape's (a dry run's model defaults to another, compiled at start-up).
        notes = (n for n in _NOTE.finditer(log) if f"for {size}x{size} x1 " in n[0])
        found = next(notes, None)
        if found:
            say(f"compile with the warm cache: {found[0]}")
            warm = compile_figures(found)
            return figures | {"compile_warm": warm["compile_s"], "warm_graphs": warm["graphs"]}
        if time.perf_counter() > until:
            return figures
        job, _ = run_job_read(client, seed, spec)
        log = client.get(job["links"]["logs"]).raise_for_status().text
        seed += 1


# The run -----------------------------------------------------------------------------


def phase(name: str, budget: float | None, run: Callable[[], None]) -> None:
    """Runs ``run`` unless the budget is spent; a failure is printed, not raised."""
    if over(budget):
        say(f"{name}: skipped, past the {budget:.0f} s budget")
        return
    say(f"{name}: starting")
    try:
        run()
    except Exception:  # noqa: BLE001 - the next phase may still measure something
        traceback.print_exc()
        say(f"{name}: failed")


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(*sys.argv[i + 1 : i + 6])
        return
    budget = float(sys.argv[sys.argv.index("--budget-s") + 1]) if "--budget-s" in sys.argv else None
    logs = Path(sys.argv[sys.argv.index("--logs") + 1]) if "--logs" in sys.argv else None
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    import torch

    if not DRY and not torch.cuda.is_available():
        print("no CUDA device here: this benchmark needs a GPU (try --dry-run)")
        return
    from bench.gpu_batch import build_full_size, seconds
    from dreamforge.models.tiny import build_tiny_sdxl

    figures: dict[str, float] = {}
    vae = ", and the VAE decoder (--vae)" if VAE else ""
    say(f"the UNet compiled {'whole' if SCOPE == 'unet' else 'by regions'} (--scope {SCOPE}){vae}")
    with tempfile.TemporaryDirectory(prefix="dreamforge-runner-") as tmp:
        root = Path(tmp)
        model_dir = root / "bench-sdxl"
        pipe = build_tiny_sdxl() if DRY else build_full_size()
        pipe.set_progress_bar_config(disable=True)
        pipe.save_pretrained(model_dir, safe_serialization=True)
        seconds(pipe, *SMALL, [0])  # warm
        bare = sum(seconds(pipe, *SMALL, [s]) for s in range(4)) / 4
        say(f"model built and saved; bare diffusers at {SMALL}: {bare:.3f} s an image")
        del pipe
        if not DRY:
            torch.cuda.empty_cache()

        def compare(label: str, size: int, steps: int, cache: Path) -> None:
            found = timed_renders(model_dir, cache, size, steps)
            say(f"{size}x{size}/{steps}: {json.dumps(found)}")
            name = f"_{label}"  # the full-size figure's name, also in a dry run
            figures[f"compiled_vs_eager{name}"] = found["compiled"] / found["eager"]
            figures[f"channels_last_eager{name}"] = found["eager_channels_last"] / found["eager"]
            figures[f"channels_last_compiled{name}"] = (
                found["compiled_channels_last"] / found["compiled"]
            )
            figures[f"compile_cold_s{name}"] = found["compile_s"]
            figures[f"compile_cold_wait_s{name}"] = found["compile_wait_s"]
            figures[f"compiled_max_levels_apart{name}"] = found["max_levels_apart"]
            figures[f"compiled_mean_levels_apart{name}"] = found["mean_levels_apart"]

        cache_a = root / "cache-a"
        data = root / "data"
        subprocess.run(
            [sys.executable, "-m", "dreamforge.cli", "model", "add", str(model_dir), "--id",
             "bench-sdxl", "--link", "--data-dir", str(data)],
            check=True, capture_output=True,
        )  # fmt: skip
        env = {
            "DREAMFORGE_DEFAULT_MODEL_ID": "bench-sdxl",
            "DREAMFORGE_COMPILE_UNET": "on",
            "DREAMFORGE_COMPILE_SCOPE": SCOPE,
            "DREAMFORGE_COMPILE_VAE": str(VAE).lower(),
            "DREAMFORGE_MAX_BATCH_SIZE": "8",
            "DREAMFORGE_CREATE_DEFAULT_MODEL": "false",
        }

        def bursts(window_s: float = 0.0) -> None:
            # On the 1024 phase's cache: the service compiles the model's default image
            # (1024x1024) too, after the first request, from there in seconds rather than
            # cold ahead of the burst's shapes.
            name = f"_window_{window_s * 1000:.0f}ms" if window_s else ""
            served_env = {
                **env,
                "DREAMFORGE_COMPILE_CACHE_DIR": str(cache_a),
                "DREAMFORGE_BATCH_WINDOW_S": str(window_s),
            }
            served = serving(data, served_env, (logs or root) / f"serve-burst{name}.log")
            with served as (client, _):
                found = burst_figures(client, bare, budget)
            figures[f"burst_vs_bare_512{name}"] = found["burst"]
            figures[f"burst_device_batches{name}"] = found["burst_batches"]
            figures[f"burst_images_compiled{name}"] = found["burst_compiled"]
            figures[f"one_at_a_time_vs_bare_512{name}"] = found["single"]

        def first_image() -> None:
            # A fresh process on the cache the 1024 phase filled.
            log = (logs or root) / "serve-first.log"
            served = serving(data, {**env, "DREAMFORGE_COMPILE_CACHE_DIR": str(cache_a)}, log)
            with served as (client, started):
                found = first_image_figures(client, started)
            for line in log.read_text(errors="replace").splitlines():
                if "runner." in line or "server.listening" in line:  # the start's milestones
                    print(f"    {line}", flush=True)
            figures["first_image_s"] = found["first_image"]
            figures["first_image_compiled"] = found["first_image_compiled"]
            if "compile_warm" in found:
                figures["compile_warm_s_1024"] = found["compile_warm"]
                figures["compile_warm_graphs_compiled"] = found["warm_graphs"]

        phase("compiled vs eager, 1024", budget, lambda: compare("1024", *LARGE, cache_a))
        phase("first image, warm cache", budget, first_image)
        phase("a burst of 16 and one at a time, 512", budget, bursts)
        phase("compiled vs eager, 512", budget, lambda: compare("512", *SMALL, root / "cache-c"))
        # A window lets a burst's first job gather the jobs sent with it (one device batch
        # fewer), at the price of the window for a job that comes alone (bench/batch_window.py).
        phase("the burst and one at a time, 100 ms batch window", budget, lambda: bursts(0.1))

    print_figures(DRY, figures)


if __name__ == "__main__":
    main()
