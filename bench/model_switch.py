"""Switching between two resident models against loading one cold, in one run.

Two copies of the tiny model (so two sets of weights), rendered one image each in turn by
the SDXL runner: with room for both (they stay loaded) and with room for one (every switch
loads from disk). 64x64, 4 steps, CPU here; on a GPU the cold load dominates far more.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path

from dreamforge.domain.jobs import JobSpec, Scheduler
from dreamforge.models.registry import hash_weights
from dreamforge.models.tiny import write_tiny_sdxl
from dreamforge.runners.device import select_device
from dreamforge.runners.protocol import ItemToRender, ModelRef, RenderRequest
from dreamforge.runners.sdxl import SdxlRunner

SWITCHES = 10


def model(folder: Path, model_id: str) -> ModelRef:
    sha256, files = hash_weights(folder)
    sizes = tuple((f.path, f.size_bytes) for f in files)
    return ModelRef(model_id, str(folder), "diffusers", sha256, "bench", sizes)


def seconds_per_switch(runner: SdxlRunner, models: list[ModelRef]) -> float:
    times = []
    for i in range(SWITCHES):
        chosen = models[i % 2]
        spec = JobSpec(
            prompt="a lighthouse",
            negative_prompt="",
            width=64,
            height=64,
            steps=4,
            guidance_scale=5.0,
            scheduler=Scheduler.EULER,
            seed=i,
            model_id=chosen.id,
        )
        started = time.perf_counter()
        runner.generate(RenderRequest(spec, chosen, (ItemToRender(0, i),)), lambda _: None, bool)
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])  # past the first load of each


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dreamforge-bench-") as tmp:
        first = write_tiny_sdxl(Path(tmp) / "a")
        second = Path(tmp) / "b"
        shutil.copytree(first, second)
        models = [model(first, "a"), model(second, "b")]
        size = sum(s for _, s in models[0].files)
        device = select_device("cpu")
        resident = seconds_per_switch(SdxlRunner(device, 2 * size + 1), models)
        cold = seconds_per_switch(SdxlRunner(device, size), models)
    print(f"{SWITCHES} renders alternating two tiny models, 64x64, 4 steps, CPU (medians)")
    print(f"resident_switch_s: {resident:.3f}")
    print(f"cold_switch_s: {cold:.3f}")
    print(f"ratio: {cold / resident:.2f}")


if __name__ == "__main__":
    main()
