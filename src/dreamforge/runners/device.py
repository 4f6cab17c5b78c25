"""Where the pipeline runs (CUDA, else Apple's MPS, else the CPU), and what it holds there.

Only CUDA reports its memory; elsewhere the figures are ``None`` and the checks that need
them pass without measuring (and say so).
"""

from __future__ import annotations

import gc
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


def allocated_memory(choice: DeviceChoice) -> int | None:
    if choice.device.type != "cuda":
        return None
    return int(torch.cuda.memory_allocated(choice.device))


def settle(choice: DeviceChoice) -> None:
    """Let go of what nothing refers to any more (a traceback can hold a whole micro-batch
    of activations) and wait for the device, so that its figures are this request's.

    The caching allocator keeps the blocks it freed: the next request of the same shape
    reuses them, where an emptied cache made every request allocate its activations from
    the driver anew (``cudaMalloc``, which synchronizes). ``free_memory`` counts them as
    free, and on an out-of-memory the allocator gives them back and tries again itself."""
    gc.collect()
    if choice.device.type == "cuda":
        torch.cuda.synchronize(choice.device)


def memory_report(choice: DeviceChoice, baseline_bytes: int | None) -> DeviceMemory:
    """What the pipeline holds on its device now, against what its loaded models hold."""
    if choice.device.type != "cuda":
        return DeviceMemory(str(choice.device), None, None)
    _free, total = torch.cuda.mem_get_info(choice.device)
    peak = int(torch.cuda.max_memory_allocated(choice.device))
    torch.cuda.reset_peak_memory_stats(choice.device)  # the next request's peak is its own
    return DeviceMemory(str(choice.device), allocated_memory(choice), total, baseline_bytes, peak)


# Working memory one SDXL item needs while it denoises, per output pixel, in fp16 (latents,
# activations, attention), with room to spare: about 3 GB for a 1024x1024 image. A guess
# on the safe side; an out-of-memory error still halves the micro-batch.
BYTES_PER_PIXEL = 3000


def item_bytes(width: int, height: int) -> int:
    """The device memory one item is expected to need while it denoises."""
    return width * height * BYTES_PER_PIXEL


class InsufficientMemory(Exception):
    """Not even one item of the job is expected to fit in the free device memory."""

    def __init__(self, width: int, height: int, free_bytes: int, total_bytes: int | None) -> None:
        total = f" of {total_bytes / 2**30:.1f} GiB" if total_bytes else ""
        super().__init__(
            f"a {width}x{height} image needs about {item_bytes(width, height) / 2**30:.1f} GiB "
            f"of device memory; {free_bytes / 2**30:.1f} GiB{total} is free. Ask for a "
            "smaller size, or run it on a larger GPU"
        )


def fit_batch(max_batch: int, free_bytes: int | None, width: int, height: int) -> int:
    """Items to render together: at most ``max_batch``, and no more than ~80% of the free
    device memory holds (``None``: unknown, as on a CPU); at least one, since the estimate
    is on the safe side (``check_headroom`` refuses what cannot fit at all)."""
    if free_bytes is None:
        return max_batch
    fits = int(free_bytes * 0.8) // item_bytes(width, height)
    return max(1, min(max_batch, fits))


def check_headroom(
    free_bytes: int | None, total_bytes: int | None, width: int, height: int
) -> None:
    """Raise ``InsufficientMemory`` if one item needs more than all the free memory."""
    if free_bytes is not None and item_bytes(width, height) > free_bytes:
        raise InsufficientMemory(width, height, free_bytes, total_bytes)


def free_memory(choice: DeviceChoice) -> tuple[int | None, int | None]:
    """Free and total device memory, the allocator's cached blocks counted as free (this
    process reuses them); ``None`` where the device cannot tell."""
    if choice.device.type != "cuda":
        return None, None
    free, total = torch.cuda.mem_get_info(choice.device)
    cached = torch.cuda.memory_reserved(choice.device) - torch.cuda.memory_allocated(choice.device)
    return int(free + cached), int(total)


def free_to_other_processes(choice: DeviceChoice) -> int | None:
    """Device memory that another process could take now (not this one's cached blocks);
    ``None`` where the device cannot tell."""
    if choice.device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(choice.device)[0])


def default_budget(choice: DeviceChoice) -> int:
    """Memory for resident pipelines when none is configured: 70% of a GPU, a quarter of
    the machine's memory on a CPU."""
    if choice.device.type == "cuda":
        _free, total = torch.cuda.mem_get_info(choice.device)
        return int(total * 0.7)
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.25)
