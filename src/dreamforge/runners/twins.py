"""Compiled twins of a pipeline's modules, and the warm-up call that compiles them.

A twin shares its module's weights (no second copy on the device) and has its own
compiled parts. The warm-up is one and the same call wherever it runs, in the runner or
in a helper process (``runners/compile_helper.py``): torch keys its cache of compiled
graphs on what the modules are called with, so a helper's compile is a cache hit for the
runner only if both call the twins alike.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from dreamforge.runners.compile_options import CompileOptions


@dataclass(frozen=True)
class Shape:
    """What a compiled graph is specialised to: a change of any of these recompiles."""

    width: int
    height: int
    batch: int
    guided: bool  # classifier-free guidance doubles the UNet's batch

    def __str__(self) -> str:
        return f"{self.width}x{self.height} x{self.batch}{' (guided)' if self.guided else ''}"


@dataclass(frozen=True)
class PromptShape:
    """The text encoders' output, as the UNet sees it: tokens, and the widths of the
    per-token and pooled embeddings."""

    tokens: int
    width: int
    pooled: int

    @classmethod
    def of(cls, pipe: StableDiffusionXLPipeline) -> PromptShape:
        second = pipe.text_encoder_2.config
        return cls(
            tokens=pipe.tokenizer.model_max_length,
            width=pipe.text_encoder.config.hidden_size + second.hidden_size,
            pooled=second.projection_dim,
        )


def shared_twin(module: torch.nn.Module) -> Any:
    """A copy of ``module``'s modules holding the very same weight tensors."""
    memo: dict[int, Any] = {
        id(t): t for t in itertools.chain(module.parameters(), module.buffers())
    }
    return copy.deepcopy(module, memo)


# The most shapes one process compiles graphs for: dynamo keeps every graph for the
# process's life (it finds a call's by checking their guards, the most recently used
# first), and past a function's recompile limit (8 graphs by default; raised below to hold
# these shapes') a full-graph compile fails.
MAX_SHAPES = 16
# Graphs a function may have a shape: by regions, the block's for each width of the UNet's
# levels with transformer blocks (two in SDXL), and as many again for graphs that a job
# made compile again (a guard that failed).
_GRAPHS_PER_SHAPE = 4


def compiled_twins(pipe: StableDiffusionXLPipeline, options: CompileOptions) -> dict[str, Any]:
    """The twins ``options`` asks for by the pipeline's component name (``unet``, ``vae``),
    set to compile at their first call.

    Each shape gets graphs of its own (``dynamic=False``), the same whichever process
    compiles them. With torch's default, a function's second shape makes it compile again
    with sizes as symbols: what a shape gets would depend on the shapes compiled before it
    in the process, and a helper process, which compiles one shape, would leave graphs in
    the cache that the runner does not ask for. (The H200's figures in docs/benchmarks.md
    are of graphs for one shape each.)
    """
    limit = MAX_SHAPES * _GRAPHS_PER_SHAPE
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, limit)
    unet = shared_twin(pipe.unet)
    if options.scope == "unet":
        unet.compile(fullgraph=True, dynamic=False)
    else:
        unet.compile_repeated_blocks(fullgraph=True, dynamic=False)
    if not options.vae:
        return {"unet": unet}
    vae = shared_twin(pipe.vae)
    vae.decoder.compile(fullgraph=True, dynamic=False)
    return {"unet": unet, "vae": vae}


def warm_up(
    pipe: StableDiffusionXLPipeline, twins: dict[str, Any], shape: Shape, prompt: PromptShape
) -> None:
    """Call the pipeline with ``twins`` in place once at ``shape``, which compiles them.

    Called as jobs call it (the pipeline's own no_grad, not inference_mode): graphs are
    guarded on the tensors' dispatch keys, and a warm-up under another grad mode left the
    first job of the shape to compile again, in its own time. The prompt goes in as
    embeddings of the text encoders' shape: the UNet sees what it sees in a job, and a
    helper process needs no text encoders.
    """
    # Its own scheduler: the job thread's is in use; the rest only computes.
    scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    warm = StableDiffusionXLPipeline(**{**pipe.components, **twins, "scheduler": scheduler})
    warm.set_progress_bar_config(disable=True)
    unet = pipe.unet

    def zeros(*size: int) -> torch.Tensor:
        return torch.zeros(*size, dtype=unet.dtype, device=unet.device)

    embeddings = {
        "prompt_embeds": zeros(shape.batch, prompt.tokens, prompt.width),
        "pooled_prompt_embeds": zeros(shape.batch, prompt.pooled),
    }
    if shape.guided:
        embeddings |= {f"negative_{name}": value for name, value in embeddings.items()}
    warm(
        **embeddings,
        width=shape.width,
        height=shape.height,
        num_inference_steps=2,
        guidance_scale=5.0 if shape.guided else 1.0,
        # The decoder runs only where it is compiled.
        output_type="pil" if "vae" in twins else "latent",
    )


@dataclass(frozen=True)
class Graphs:
    """Graphs inductor compiled, and took from its on-disk cache instead."""

    compiled: int
    cached: int

    def __sub__(self, other: Graphs) -> Graphs:
        return Graphs(self.compiled - other.compiled, self.cached - other.cached)

    def __str__(self) -> str:
        return f"{self.compiled} graphs compiled, {self.cached} from the cache"


def graphs_so_far() -> Graphs:
    """``Graphs`` of this process so far."""
    from torch._dynamo.utils import counters

    found = counters["inductor"]
    return Graphs(int(found["fxgraph_cache_miss"]), int(found["fxgraph_cache_hit"]))
