"""What the runner makes the device wait after a micro-batch: the time a request takes
around a device that takes none (its images ready at once), which is mostly the PNGs'
encoding, since the next request starts once every image is sent. With one encoding
thread (the runner until 2026-12-02) and with the runner's ``ENCODE_THREADS``, rounds
alternated in one run.

On the CPU with the tiny model's images: 8 of 512x512 in one micro-batch. Its random
weights make noise-like images, which PNG's default level encodes in 47 ms an image on
this machine (a smooth picture in 68 ms). The tail is the device's
idle time only on a GPU, where the denoise is fast enough for it to show: on the H200, a
batch of 8 at 512x512/8 took about 0.65 s.

    python -m bench.encode_tail
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from bench.common import render_request
from dreamforge.models.tiny import build_tiny_sdxl
from dreamforge.runners.device import select_device
from dreamforge.runners.sdxl import ENCODE_THREADS, SdxlRunner

ROUNDS = 7
SIZE, ITEMS = 512, 8


class InstantDevice:
    """The loaded pipeline, whose call reports its steps and returns images made
    beforehand, at once."""

    def __init__(self, pipe: Any, images: list[Image.Image]) -> None:
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "_images", images)

    def __call__(self, **kwargs: Any) -> Any:
        for step in range(kwargs["num_inference_steps"]):
            kwargs["callback_on_step_end"](self, step, None, {})
        return SimpleNamespace(images=self._images[: len(kwargs["prompt"])])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipe, name, value)


def instant(runner: SdxlRunner, request: Any) -> None:
    """Load the request's model into ``runner``, render its images once, and put them
    behind an ``InstantDevice``."""
    runner.generate(dataclasses.replace(request, items=()), lambda _: None, bool)
    resident = runner._resident.get(request.model.id, request.model.sha256)
    assert resident is not None
    spec = request.spec
    images = resident.pipe(
        prompt=[spec.prompt] * len(request.items), width=SIZE, height=SIZE, num_inference_steps=2
    ).images
    runner._resident.add(
        request.model.id, dataclasses.replace(resident, pipe=InstantDevice(resident.pipe, images))
    )


def request_ms(runner: SdxlRunner, request: Any) -> float:
    started = time.perf_counter()
    runner.generate(request, lambda _: None, bool)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="dreamforge-encode-") as tmp:
        model_dir = Path(tmp) / "tiny"
        build_tiny_sdxl().save_pretrained(model_dir, safe_serialization=True)
        request = render_request(model_dir, SIZE, 2, ITEMS)
        runners = {
            threads: SdxlRunner(select_device("cpu"), encode_threads=threads)
            for threads in (1, ENCODE_THREADS)
        }
        for runner in runners.values():
            instant(runner, request)
            request_ms(runner, request)  # the threads started
        taken: dict[int, list[float]] = {threads: [] for threads in runners}
        for _ in range(ROUNDS):
            for threads, runner in runners.items():
                taken[threads].append(request_ms(runner, request))
    one, several = (statistics.median(taken[t]) for t in (1, ENCODE_THREADS))
    print(f"{ITEMS} images of {SIZE}x{SIZE} in one micro-batch, a device that takes no time")
    print(f"one thread: {', '.join(f'{ms:.0f}' for ms in taken[1])} ms")
    print(f"{ENCODE_THREADS} threads: {', '.join(f'{ms:.0f}' for ms in taken[ENCODE_THREADS])} ms")
    print(f"encode_threads: {ENCODE_THREADS}")
    print(f"request_ms_one_thread: {one:.0f}")
    print(f"request_ms_threads: {several:.0f}")
    print(f"one_thread_vs_threads: {one / several:.2f}")


if __name__ == "__main__":
    main()
