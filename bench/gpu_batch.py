"""Batched against one-at-a-time rendering on a GPU, with a full-size SDXL-shaped model.

The model has SDXL's real shapes (UNet 320/640/1280 with 1/2/10 transformer layers, CLIP-L
and OpenCLIP-bigG text encoders, the SDXL VAE) and random weights, in fp16, built here:
nothing is downloaded. Two comparisons, each in one run: 4 images at 1024x1024 and 30
steps, and 8 images at 512x512 and 8 steps, one pipeline call with a generator per item
against one call per item. Needs CUDA; without it, says so and exits 0.

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
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from dreamforge.models.tiny import _alphabet_tokenizer

    tokenizer = _alphabet_tokenizer()
    vocab = len(tokenizer.get_vocab())

    def text(width: int, layers: int, heads: int, projection: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=4 * width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            projection_dim=projection,
            hidden_act="gelu",
        )

    with torch.device("cuda"):
        unet = UNet2DConditionModel(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            use_linear_projection=True,
        )
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            sample_size=1024,
            scaling_factor=0.13025,
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(text(768, 12, 12, 768)),
            text_encoder_2=CLIPTextModelWithProjection(text(1280, 32, 20, 1280)),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=EulerDiscreteScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
            ),
        )
    return pipe.to(torch.float16)


def seconds(pipe: Any, size: int, steps: int, seeds: list[int]) -> float:
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
