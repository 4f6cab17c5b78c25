"""GPU hygiene (OR-001) on a real device: after each outcome of a job, is the device back
to what the loaded pipeline holds?

Runs the SDXL runner (the code the worker's child process runs) with the tiny model on
CUDA through five outcomes: success, a pipeline error at step 2, a cancel at step 2, a
real out-of-memory error in the middle of denoising (a tensor larger than the device is
asked for at step 2; the runner halves the micro-batch and finishes), and a success again.
After each, the runner gives back what the job left and reports; the figure is how far
above its baseline the device stayed. Without CUDA, says so and exits 0.

    python -m bench.gpu_hygiene            # on a machine with a GPU
    python -m bench.gpu_hygiene --dry-run  # on the CPU: checks the script, measures nothing
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from dreamforge.domain.jobs import JobSpec
from dreamforge.models.tiny import build_tiny_sdxl
from dreamforge.runners.device import select_device
from dreamforge.runners.protocol import ItemToRender, ModelRef, RenderRequest
from dreamforge.runners.sdxl import SdxlRunner

TOLERANCE_BYTES = 128 * 2**20  # the worker's default (DREAMFORGE_DEVICE_MEMORY_TOLERANCE_BYTES)


def at_step_two(action: Callable[[], bool]) -> Callable[[], bool]:
    calls = [0]

    def should_cancel() -> bool:
        calls[0] += 1
        return action() if calls[0] == 2 else False

    return should_cancel


def pipeline_error() -> bool:
    raise RuntimeError("a pipeline error")


def out_of_memory() -> bool:
    total = torch.cuda.mem_get_info()[1]
    torch.empty(total, dtype=torch.uint8, device="cuda")  # more than is free: a real OOM
    return False


def main() -> None:
    dry_run = "--dry-run" in sys.argv
    if not dry_run and not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (try --dry-run)")
        return
    device = select_device("cpu" if dry_run else None)
    size = 64 if dry_run else 1024
    with tempfile.TemporaryDirectory(prefix="dreamforge-hygiene-") as tmp:
        build_tiny_sdxl().save_pretrained(tmp, safe_serialization=True)
        files = tuple(
            (str(p.relative_to(tmp)), p.stat().st_size) for p in Path(tmp).rglob("*") if p.is_file()
        )
        model = ModelRef("tiny", tmp, "diffusers", "0" * 64, "bench", files)
        runner = SdxlRunner(device)
        spec = JobSpec(
            prompt="a lighthouse at dawn",
            negative_prompt="",
            width=size,
            height=size,
            steps=4,
            guidance_scale=5.0,
            scheduler="euler",
            seed=1,
            model_id="tiny",
            count=2,
            item_seeds=(1, 2),
        )
        request = RenderRequest(spec, model, (ItemToRender(0, 1), ItemToRender(1, 2)), max_batch=2)
        outcomes: dict[str, Callable[[], bool]] = {
            "succeeded": bool,
            "failed": at_step_two(pipeline_error),
            "canceled": at_step_two(lambda: True),
            "oom_then_halved": at_step_two(out_of_memory if not dry_run else pipeline_error),
            "succeeded_again": bool,
        }
        excess: dict[str, int | None] = {}
        for name, should_cancel in outcomes.items():
            try:
                runner.generate(request, lambda _: None, should_cancel)
                how = "ok"
            except Exception as exc:  # noqa: BLE001 - each outcome is expected to raise or not
                how = type(exc).__name__
            memory = runner.report()
            excess[name] = memory.excess_bytes
            print(
                f"{name:16} ended {how:15} allocated {memory.allocated_bytes} "
                f"baseline {memory.baseline_bytes} excess {memory.excess_bytes}"
            )
    measured = [e for e in excess.values() if e is not None]
    clean = sum(1 for e in measured if e <= TOLERANCE_BYTES)
    print(f"device: {torch.cuda.get_device_name() if not dry_run else 'cpu (dry run)'}")
    print(f"clean_outcomes: {clean}/{len(measured)}")
    print(f"max_excess_mib: {max(measured) / 2**20:.1f}" if measured else "max_excess_mib: n/a")


if __name__ == "__main__":
    main()
