"""How much of the UNet to compile: images/s at 1024x1024/30 of eager against several
scopes of ``torch.compile`` and of CUDA graphs, each with the seconds of its first call
(the compile, the capture) and how far its image is from eager's, in one process on a GPU.

The runner compiles by regions (the transformer blocks, diffusers' compile_repeated_blocks)
so that a compile takes seconds, not minutes; on an H200 that gave 1.13x eager at
1024x1024/30, where a whole-UNet compile had given 2.5x in 154 s. Plain diffusers is
launch-bound there, so the scopes tried widen what is compiled (the ResNet blocks and the
resamplers too, then the whole UNet), and take the kernel launches off the host: CUDA
graphs of the whole UNet, by torch.compile (``mode="reduce-overhead"``: inductor, minutes;
``backend="cudagraphs"``: dynamo's trace without inductor), and captured by hand around the
UNet's call (``bench/cuda_graph.py``), eager or with its blocks compiled, which needs no
whole-UNet compile at all. Each scope is a twin of the UNet that shares its weights;
shapes are static (``dynamic=False``). The scopes run cheapest first; the whole-UNet
inductor ones take minutes each, so ``--only`` picks some for a short lease.

The eager render's share spent denoising (the rest is the text encoders, the VAE's decode
and the image's conversion) bounds what any UNet scope can gain: ``eager_denoise_share``.

    python -m bench.gpu_compile_scopes                         # needs CUDA; without it, says so
    python -m bench.gpu_compile_scopes --only graphed,blocks_graphed
    python -m bench.gpu_compile_scopes --dry-run               # the tiny model on the CPU
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bench.common import say

DRY = "--dry-run" in sys.argv
SIZE, STEPS = (64, 2) if DRY else (1024, 30)
RENDERS = 2 if DRY else 3
BLOCKS = ("BasicTransformerBlock",)
WIDER = (*BLOCKS, "ResnetBlock2D", "Downsample2D", "Upsample2D")


@dataclass(frozen=True)
class Scope:
    """The module classes compiled (``None``: the whole UNet, as one graph), torch.compile's
    options, and whether the UNet's call is then replayed from CUDA graphs captured by hand."""

    classes: tuple[str, ...] | None
    options: dict[str, Any] = field(default_factory=dict)
    graphed: bool = False


# Measured on an H200 (2026-11-30): blocks 1.19x in 10.9 s, blocks and ResNets 1.17x in
# 26.2 s; CUDA graphs per region failed (diffusers keeps a ResNet block's output, which the
# next replay overwrites), so CUDA graphs are tried around the whole UNet only.
SCOPES: dict[str, Scope] = {
    "blocks": Scope(BLOCKS),
    "graphed": Scope((), graphed=True),
    "blocks_graphed": Scope(BLOCKS, graphed=True),
    "unet_graphs_backend": Scope(None, {"backend": "cudagraphs"}),
    "blocks_resnets": Scope(WIDER),
    "unet": Scope(None),
    "unet_cudagraphs": Scope(None, {"mode": "reduce-overhead"}),
}


def scoped_twin(unet: Any, scope: Scope) -> Any:
    from bench.cuda_graph import replay_from_graphs
    from dreamforge.runners.twins import shared_twin

    twin = shared_twin(unet)
    for module in twin.modules() if scope.classes is not None else [twin]:
        if scope.classes is None or type(module).__name__ in scope.classes:
            module.compile(fullgraph=True, dynamic=False, **scope.options)
    if scope.graphed:
        replay_from_graphs(twin)
    return twin


def image(pipe: Any, seed: int) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(seed)
    found = pipe("a lighthouse at dawn", width=SIZE, height=SIZE, num_inference_steps=STEPS,
                 generator=generator, output_type="np").images[0]  # fmt: skip
    return np.asarray(found * 255, dtype=np.float32)


def chosen() -> dict[str, Scope]:
    if "--only" not in sys.argv:
        return SCOPES
    names = sys.argv[sys.argv.index("--only") + 1].split(",")
    unknown = [n for n in names if n not in SCOPES]
    if unknown:
        raise SystemExit(f"no scope {', '.join(unknown)}; the scopes: {', '.join(SCOPES)}")
    return {n: SCOPES[n] for n in names}


def main() -> None:
    scopes = chosen()
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
    denoise = sum(seconds(pipe, SIZE, STEPS, [s], output_type="latent") for s in range(RENDERS))
    figures = {"eager_denoise_share": eager * denoise / RENDERS}
    share = figures["eager_denoise_share"]
    say(f"eager: {eager:.3f} images/s at {SIZE}x{SIZE}/{STEPS}, {100 * share:.0f}% of it denoising")
    reference = image(pipe, 0)
    for name, scope in scopes.items():
        try:
            twin = scoped_twin(pipe.unet, scope)
            scoped = StableDiffusionXLPipeline(**{**pipe.components, "unet": twin})
            scoped.set_progress_bar_config(disable=True)
            first = seconds(scoped, SIZE, STEPS, [0])  # compiles, captures
            apart = np.abs(image(scoped, 0) - reference)  # CUDA graph trees record on a later call
            rate = RENDERS / sum(seconds(scoped, SIZE, STEPS, [s]) for s in range(RENDERS))
        except Exception:  # noqa: BLE001 - the next scope may still work
            traceback.print_exc()
            say(f"{name}: failed")
            continue
        figures[f"{name}_vs_eager"] = rate / eager
        figures[f"{name}_first_call_s"] = first
        figures[f"{name}_max_levels_apart"] = float(apart.max())
        say(
            f"{name}: {rate:.3f} images/s, its first call (the compile) {first:.1f} s; "
            f"{apart.max():.0f} levels of 255 from eager at most, {apart.mean():.2f} mean"
        )
        del twin, scoped
    print_figures(DRY, figures)


if __name__ == "__main__":
    main()
