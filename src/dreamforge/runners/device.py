"""Choosing where the pipeline runs: CUDA, else Apple's MPS, else the CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from dreamforge.runners.protocol import DeviceMemory


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def select_device(requested: str | None = None) -> DeviceChoice:
    """The requested device, or the best available; half precision on GPUs only."""
    if requested:
        device = torch.device(requested)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    dtype = torch.float32 if device.type == "cpu" else torch.float16
    return DeviceChoice(device, dtype)


def memory_report(choice: DeviceChoice) -> DeviceMemory:
    """What the pipeline holds on its device now; only CUDA can tell."""
    if choice.device.type != "cuda":
        return DeviceMemory(str(choice.device), None, None)
    _free, total = torch.cuda.mem_get_info(choice.device)
    return DeviceMemory(str(choice.device), torch.cuda.memory_allocated(choice.device), total)


# Working memory one SDXL item needs while it denoises, per output pixel, in fp16 (latents,
# activations, attention), with room to spare: about 3 GB for a 1024x1024 image. A guess
# on the safe side; an out-of-memory error still halves the micro-batch.
BYTES_PER_PIXEL = 3000


def fit_batch(max_batch: int, free_bytes: int | None, width: int, height: int) -> int:
    """Items to render together: at most ``max_batch``, and no more than ~80% of the free
    device memory holds (``None``: unknown, as on a CPU)."""
    if free_bytes is None:
        return max_batch
    fits = int(free_bytes * 0.8) // (width * height * BYTES_PER_PIXEL)
    return max(1, min(max_batch, fits))


def free_memory(choice: DeviceChoice) -> int | None:
    if choice.device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(choice.device)
    return int(free)


def default_budget(choice: DeviceChoice) -> int:
    """Memory for resident pipelines when none is configured: 70% of a GPU, a quarter of
    the machine's memory on a CPU."""
    if choice.device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(choice.device)
        return int(total * 0.7)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25)
