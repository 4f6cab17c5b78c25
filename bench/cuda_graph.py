"""A module's forward replayed from CUDA graphs, one per shape of its inputs: the kernels
of a call are launched by the driver as one graph, not one by one from Python, which is
what plain diffusers spends its time on at SDXL sizes on a large card.

torch.compile's CUDA graphs (``mode="reduce-overhead"``) need the whole UNet in one
compiled graph, minutes of compiling; on the transformer blocks alone they fail, because
diffusers keeps a block's output while the next block replays the same graph over it.
Captured by hand around the whole UNet's call, the graph takes the UNet as it is: eager,
or with its blocks compiled (seconds), in a capture of about three calls' time.

Inference only, and for the benchmarks until a GPU has measured it: each shape's graph
keeps its own activations, and its inputs are copied into buffers the graph reads (a
value baked in at capture, such as a timestep passed as a number rather than a tensor,
would be a wrong image, which ``bench/gpu_compile_scopes.py`` checks against eager).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_leaves, tree_map, tree_unflatten


def replay_from_graphs(module: torch.nn.Module) -> None:
    """Make ``module``'s calls replay a CUDA graph captured at the first call of each shape
    (on a CPU, for dry runs, a stand-in that calls the forward again)."""
    forward = module.forward
    graphs: dict[Any, tuple[Callable[[], None], list[Any], Any]] = {}

    def replayed(*args: Any, **kwargs: Any) -> Any:
        leaves, spec = tree_flatten((args, kwargs))
        key = (str(spec), *(_shape_or_value(leaf) for leaf in leaves))
        if key not in graphs:
            graphs[key] = _capture(forward, leaves, spec)
        replay, buffers, outputs = graphs[key]
        for buffer, leaf in zip(buffers, leaves, strict=True):
            if isinstance(buffer, torch.Tensor):
                buffer.copy_(leaf)
        replay()
        # The next replay writes over the outputs: the caller gets copies.
        return tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, outputs)

    module.forward = replayed


def _shape_or_value(leaf: Any) -> Any:
    if isinstance(leaf, torch.Tensor):
        return (tuple(leaf.shape), leaf.dtype, leaf.device)
    return leaf  # None, a flag: part of what the graph was captured for


def _capture(
    forward: Callable[..., Any], leaves: list[Any], spec: Any
) -> tuple[Callable[[], None], list[Any], Any]:
    """A replay of ``forward`` on buffers shaped as ``leaves``, the buffers, and the
    outputs the replay writes."""
    buffers = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
    args, kwargs = tree_unflatten(buffers, spec)

    def call() -> Any:
        return forward(*args, **kwargs)

    if not any(isinstance(b, torch.Tensor) and b.is_cuda for b in buffers):
        outputs = call()

        def again() -> None:  # what a graph's replay does: the same outputs, rewritten
            for output, fresh in zip(tree_leaves(outputs), tree_leaves(call()), strict=True):
                if isinstance(output, torch.Tensor):
                    output.copy_(fresh)

        return again, buffers, outputs
    # Warmed up outside the graph, on a side stream as torch's CUDA graph notes ask: the
    # first calls compile, pick cuDNN's kernels and fill the allocator.
    side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            call()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = call()
    return graph.replay, buffers, outputs
