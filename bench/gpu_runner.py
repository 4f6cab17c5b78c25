"""The fast runner on a GPU: compiled against eager, the service (one job at a time, and a
burst of 16 jobs of one shape, batched across jobs) against a bare diffusers loop, compile
time with a cold and a warm cache, and the first image from process start.

The model has SDXL's real shapes and random weights in fp16, built here (nothing is
downloaded) and saved to a temporary folder that the service registers. Targets on an
H100/H200-class card: compiled >= 2x eager, burst >= 3x a bare one-at-a-time loop at
512x512/8 steps, first image <= 12 s from process start at 1024x1024/30 with a warm cache.

    python -m bench.gpu_runner            # needs CUDA; without it, says so and exits 0
    python -m bench.gpu_runner --dry-run  # the tiny model on the CPU: checks the script
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench.common import free_port, run_job

DRY = "--dry-run" in sys.argv
LARGE = (64, 2) if DRY else (1024, 30)
SMALL = (64, 2) if DRY else (512, 8)
BURST = 16


def timed_renders(
    model_dir: Path, compiled: bool, cache: Path, size: int, steps: int
) -> dict[str, float]:
    """In a process of its own (inductor reads its cache dir at import): images/s of one
    image at a time, and for the compiled runner the seconds its compile took."""
    child = subprocess.run(
        [sys.executable, "-m", "bench.gpu_runner", "--child", str(model_dir), str(cache),
         str(int(compiled)), str(size), str(steps), *(["--dry-run"] if DRY else [])],
        env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache / "inductor")},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(child.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def child(model_dir: str, cache: str, compiled: str, size: str, steps: str) -> None:
    import torch

    from dreamforge.domain.jobs import JobSpec, Scheduler
    from dreamforge.runners.device import select_device
    from dreamforge.runners.protocol import ItemToRender, ModelRef, RenderRequest, RunnerNote
    from dreamforge.runners.sdxl import SdxlRunner

    device = select_device("cpu" if DRY else None)
    runner_ = SdxlRunner(device, None, compiled == "1", Path(cache) / "artifacts.bin")
    spec = JobSpec(
        prompt="a lighthouse at dawn",
        negative_prompt="",
        width=int(size),
        height=int(size),
        steps=int(steps),
        guidance_scale=5.0,
        scheduler=Scheduler.EULER,
        seed=1,
        model_id="bench",
        item_seeds=(1,),
    )
    request = RenderRequest(
        spec, ModelRef("bench", model_dir, "diffusers", "b" * 64, "bench"), (ItemToRender(0, 1),)
    )
    notes: list[str] = []

    def render() -> None:
        runner_.generate(
            request, lambda m: notes.append(m.message) if isinstance(m, RunnerNote) else None, bool
        )

    render()  # loads, and starts the compile of this shape
    compile_s = 0.0
    if runner_.compiled is not None:
        runner_.compiled.wait()
        render()  # brings the compile's note
        compile_s = float(re.search(r"in ([\d.]+)s", notes[0])[1])  # type: ignore[index]
    sync = torch.cuda.synchronize if device.device.type == "cuda" else (lambda: None)
    sync()
    started, count = time.perf_counter(), 3 if DRY else 10
    for _ in range(count):
        render()
    sync()
    print(
        json.dumps(
            {"images_per_s": count / (time.perf_counter() - started), "compile_s": compile_s}
        )
    )


def serve(data: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, float]:
    """`dreamforge serve` on ``data``; the process, its URL and when it was started."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "dreamforge.cli", "serve", "--port", str(port),
         "--data-dir", str(data)],
        env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return process, url, started
        except httpx.TransportError:
            time.sleep(0.1)


def service_figures(data: Path, env: dict[str, str], bare_per_image: float) -> dict[str, float]:
    size, steps = SMALL
    spec = {"prompt": "a lighthouse at dawn", "width": size, "height": size, "steps": steps}
    process, url, _ = serve(data, env)
    try:
        with httpx.Client(base_url=url, timeout=900) as client, ThreadPoolExecutor(BURST) as pool:

            def burst() -> float:
                started = time.perf_counter()
                list(pool.map(lambda seed: run_job(client, seed, spec), range(BURST)))
                return time.perf_counter() - started

            for _ in range(3):  # warms every batch shape up, compiled where it compiles
                burst()
            burst_s = burst()
            started = time.perf_counter()
            for seed in range(4):
                run_job(client, seed, spec)
            single_s = (time.perf_counter() - started) / 4
    finally:
        process.terminate()
        process.wait(120)
    return {"burst": bare_per_image * BURST / burst_s, "single": bare_per_image / single_s}


def main() -> None:
    if "--child" in sys.argv:
        i = sys.argv.index("--child")
        child(*sys.argv[i + 1 : i + 6])
        return
    import torch

    if not DRY and not torch.cuda.is_available():
        print("no CUDA device here: this benchmark needs a GPU (try --dry-run)")
        return
    from bench.gpu_batch import build_full_size, seconds
    from dreamforge.models.tiny import build_tiny_sdxl

    with tempfile.TemporaryDirectory(prefix="dreamforge-runner-") as tmp:
        root = Path(tmp)
        pipe = build_tiny_sdxl() if DRY else build_full_size()
        pipe.set_progress_bar_config(disable=True)
        model_dir = root / "bench-sdxl"
        pipe.save_pretrained(model_dir, safe_serialization=True)
        seconds(pipe, *SMALL, [0])  # warm
        bare = sum(seconds(pipe, *SMALL, [s]) for s in range(4)) / 4
        del pipe
        if not DRY:
            torch.cuda.empty_cache()

        cache = root / "compile-cache"
        ratios = {}
        for name, (size, steps) in (("1024", LARGE), ("512", SMALL)):
            eager = timed_renders(model_dir, False, cache, size, steps)
            compiled = timed_renders(model_dir, True, cache, size, steps)
            ratios[name] = compiled["images_per_s"] / eager["images_per_s"]
        cold = timed_renders(model_dir, True, root / "cold-cache", *SMALL)["compile_s"]
        warm = timed_renders(model_dir, True, root / "cold-cache", *SMALL)["compile_s"]

        data = root / "data"
        subprocess.run(
            [sys.executable, "-m", "dreamforge.cli", "model", "add", str(model_dir), "--id",
             "bench-sdxl", "--link", "--data-dir", str(data)],
            check=True, capture_output=True,
        )  # fmt: skip
        env = {
            "DREAMFORGE_DEFAULT_MODEL_ID": "bench-sdxl",
            "DREAMFORGE_COMPILE_UNET": "on",
            "DREAMFORGE_COMPILE_CACHE_DIR": str(cache),
            "DREAMFORGE_MAX_BATCH_SIZE": "8",
            "DREAMFORGE_CREATE_DEFAULT_MODEL": "false",
        }
        service = service_figures(data, env, bare)

        process, url, started = serve(data, env)  # a fresh process, the cache warm
        try:
            with httpx.Client(base_url=url, timeout=900) as client:
                size, steps = LARGE
                run_job(
                    client, 1, {"prompt": "first", "width": size, "height": size, "steps": steps}
                )
                first_image_s = time.perf_counter() - started
        finally:
            process.terminate()
            process.wait(120)

    print(f"device: {'cpu (dry run)' if DRY else torch.cuda.get_device_name()}")
    print(f"torch: {torch.__version__}")
    print(f"compiled_vs_eager_1024: {ratios['1024']:.2f}")
    print(f"compiled_vs_eager_512: {ratios['512']:.2f}")
    print(f"burst_vs_bare_512: {service['burst']:.2f}")
    print(f"one_at_a_time_vs_bare_512: {service['single']:.2f}")
    print(f"compile_cold_s: {cold:.1f}")
    print(f"compile_warm_s: {warm:.1f}")
    print(f"first_image_s: {first_image_s:.1f}")


if __name__ == "__main__":
    main()
