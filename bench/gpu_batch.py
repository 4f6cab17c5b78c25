"""Batched against one-at-a-time rendering on a GPU, with a full-size SDXL-shaped model.

The model has SDXL base's real shapes (from the config shipped in the package: UNet
320/640/1280 with 1/2/10 transformer layers, CLIP-L and OpenCLIP-bigG text encoders, the SDXL
VAE, CLIP's tokenizers) and random weights, in fp16, built here: nothing is downloaded. Two
comparisons, each in one run: 4 images at 1024x1024 and 30 steps, and 8 images at 512x512
and 8 steps, one pipeline call with a generator per item against one call per item. Needs
CUDA; without it, says so and exits 0.

    python -m bench.gpu_batch            # on a machine with a GPU
    python -m bench.gpu_batch --dry-run  # the tiny model on the CPU: checks the script
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

from dreamforge.models.tiny import build_tiny_sdxl


def build_full_size() -> Any:
    """SDXL base's shapes from the config Dream Forge ships, random weights, fp16, built
    straight on the GPU."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from dreamforge.models.shipped import ShippedConfig
    from dreamforge.runners.single_file import tokenizers

    config = ShippedConfig("sdxl-base-1.0")
    scheduler = EulerDiscreteScheduler.from_config(config.component("scheduler"))
    with torch.device("cuda"):
        pipe = StableDiffusionXLPipeline(
            vae=AutoencoderKL.from_config(config.component("vae")),
            text_encoder=CLIPTextModel(CLIPTextConfig(**config.component("text_encoder"))),
            text_encoder_2=CLIPTextModelWithProjection(
                CLIPTextConfig(**config.component("text_encoder_2"))
            ),
            unet=UNet2DConditionModel.from_config(config.component("unet")),
            scheduler=scheduler,
            **tokenizers(config),
        )
    return pipe.to(torch.float16)


def seconds(pipe: Any, size: int, steps: int, seeds: list[int], **call: Any) -> float:
    """One pipeline call's seconds, the device synchronised; ``call``: more of its arguments."""
    device = pipe.device
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    pipe(
        prompt=["a lighthouse at dawn"] * len(seeds),
        width=size,
        height=size,
        num_inference_steps=steps,
        generator=generators,
        **call,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def compare(pipe: Any, size: int, steps: int, count: int) -> float:
    seconds(pipe, size, steps, [0])  # warm up (kernels, allocator)
    seconds(pipe, size, steps, list(range(count)))
    batched = seconds(pipe, size, steps, list(range(count)))
    single = sum(seconds(pipe, size, steps, [s]) for s in range(count))
    print(
        f"{count} x {size}x{size}, {steps} steps: batched {batched / count:.3f} s/image, "
        f"one at a time {single / count:.3f} s/image"
    )
    return single / batched


def main() -> None:
    dry_run = "--dry-run" in sys.argv
    if not dry_run and not torch.cuda.is_available():
        print("no CUDA device here: this benchmark needs a GPU (try --dry-run)")
        return
    if dry_run:
        pipe, large, small = build_tiny_sdxl(), (64, 2), (64, 2)
    else:
        pipe, large, small = build_full_size(), (1024, 30), (512, 8)
    pipe.set_progress_bar_config(disable=True)
    ratio_large = compare(pipe, *large, count=4)
    ratio_small = compare(pipe, *small, count=8)
    print(f"device: {torch.cuda.get_device_name() if not dry_run else 'cpu (dry run)'}")
    print(f"ratio_1024: {ratio_large:.2f}")
    print(f"ratio_512: {ratio_small:.2f}")


if __name__ == "__main__":
    main()
