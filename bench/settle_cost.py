"""What settling after each request costs the pipeline's process, before and after a
compile: the garbage collection and the device memory report that end every request
(``SdxlRunner.report``), while the device waits for the next one.

Runs the runner in this process as its child process runs it (everything imported, then
frozen out of the collector's sight), on the CPU with the tiny model.

    python -m bench.settle_cost
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

from bench.common import render_request
from dreamforge.models.tiny import build_tiny_sdxl
from dreamforge.runners.compile_options import CompileOptions
from dreamforge.runners.device import select_device
from dreamforge.runners.sdxl import SdxlRunner

ROUNDS = 20


def settle_ms(runner: SdxlRunner) -> float:
    started = time.perf_counter()
    for _ in range(ROUNDS):
        runner.report()
    return (time.perf_counter() - started) * 1000 / ROUNDS


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dreamforge-settle-") as tmp:
        model_dir = Path(tmp) / "tiny"
        build_tiny_sdxl().save_pretrained(model_dir, safe_serialization=True)
        gc.freeze()  # as the child does once it has imported everything
        runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on"))
        assert runner.compiled is not None
        request = render_request(model_dir, 64, 2)
        runner.generate(request, lambda _: None, bool)  # eager; starts the compile
        eager = settle_ms(runner)
        runner.compiled.wait()
        runner.generate(request, lambda _: None, bool)  # compiled
        compiled = settle_ms(runner)
        runner.compiled.stop()
    print(f"objects the collector tracks: {len(gc.get_objects())}")
    print(f"settle_ms_before_compile: {eager:.1f}")
    print(f"settle_ms_after_compile: {compiled:.1f}")


if __name__ == "__main__":
    main()
