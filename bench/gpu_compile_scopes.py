"""How much of the UNet to compile: images/s at 1024x1024/30 of eager against several
scopes of ``torch.compile``, each with its compile time, in one process on a GPU.

The runner compiles by regions (the transformer blocks, diffusers' compile_repeated_blocks)
so that a compile takes seconds, not minutes; on an H200 that gave 1.13x eager at
1024x1024/30, where a whole-UNet compile had given 2.5x in 154 s. Plain diffusers is
launch-bound there, so the scopes tried widen what is compiled (the ResNet blocks and the
resamplers too, then the whole UNet) and capture the whole UNet in CUDA graphs
(``mode="reduce-overhead"``), to find what gets the speed for the least compile. Each
scope compiles a twin of the UNet that shares its weights; shapes are static
(``dynamic=False``). The whole-UNet scopes take minutes each.

    python -m bench.gpu_compile_scopes            # needs CUDA; without it, says so
    python -m bench.gpu_compile_scopes --dry-run  # the tiny model on the CPU
"""

from __future__ import annotations

import sys
import traceback
from typing import Any

import torch

from bench.common import say

DRY = "--dry-run" in sys.argv
SIZE, STEPS = (64, 2) if DRY else (1024, 30)
RENDERS = 2 if DRY else 3
BLOCKS = ("BasicTransformerBlock",)
WIDER = (*BLOCKS, "ResnetBlock2D", "Downsample2D", "Upsample2D")
# Measured on an H200 (2026-11-30): blocks 1.19x in 10.9 s, blocks and ResNets 1.17x in
# 26.2 s; CUDA graphs per region fail (diffusers keeps a ResNet block's output, which the
# next replay overwrites), so CUDA graphs are tried on the whole UNet only. ``None``: the
# whole UNet, in one graph.
SCOPES: dict[str, tuple[tuple[str, ...] | None, dict[str, Any]]] = {
    "blocks": (BLOCKS, {}),
    "blocks_resnets": (WIDER, {}),
    "unet": (None, {}),
    "unet_cudagraphs": (None, {"mode": "reduce-overhead"}),
}


def compiled_twin(unet: Any, classes: tuple[str, ...] | None, options: dict[str, Any]) -> Any:
    from dreamforge.runners.twins import shared_twin

    twin = shared_twin(unet)
    for module in twin.modules() if classes is not None else [twin]:
        if classes is None or type(module).__name__ in classes:
            module.compile(fullgraph=True, dynamic=False, **options)
    return twin


def main() -> None:
    if not DRY and not torch.cuda.is_available():
        print("no CUDA device here: this benchmark needs a GPU (try --dry-run)")
        return
    from diffusers import StableDiffusionXLPipeline

    from bench.common import print_figures
    from bench.gpu_batch import build_full_size, seconds
    from dreamforge.models.tiny import build_tiny_sdxl

    # Static shapes recompile once per channel count of a block (a dozen for the ResNets).
    torch._dynamo.config.recompile_limit = 64
    pipe = build_tiny_sdxl() if DRY else build_full_size()
    pipe.set_progress_bar_config(disable=True)
    seconds(pipe, SIZE, STEPS, [0])
    eager = RENDERS / sum(seconds(pipe, SIZE, STEPS, [s]) for s in range(RENDERS))
    say(f"eager: {eager:.3f} images/s at {SIZE}x{SIZE}/{STEPS}")
    figures: dict[str, float] = {}
    for name, (classes, options) in SCOPES.items():
        try:
            twin = compiled_twin(pipe.unet, classes, options)
            scoped = StableDiffusionXLPipeline(**{**pipe.components, "unet": twin})
            scoped.set_progress_bar_config(disable=True)
            first = seconds(scoped, SIZE, STEPS, [0])  # compiles
            seconds(scoped, SIZE, STEPS, [0])  # CUDA graphs record on a later call
            rate = RENDERS / sum(seconds(scoped, SIZE, STEPS, [s]) for s in range(RENDERS))
        except Exception:  # noqa: BLE001 - the next scope may still work
            traceback.print_exc()
            say(f"{name}: failed")
            continue
        figures[f"{name}_vs_eager"] = rate / eager
        figures[f"{name}_compile_s"] = first
        say(f"{name}: {rate:.3f} images/s, first call (the compile) {first:.1f} s")
    print_figures(DRY, figures)


if __name__ == "__main__":
    main()
