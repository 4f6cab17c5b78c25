"""Compiling in a helper process, so that images need not wait for the compiler.

torch cannot run modules while it compiles others in the same process (see
``runners/compiled.py``), and a cold compile takes seconds by regions, minutes for a whole
UNet. A helper process makes the same twins of a copy of the UNet (and VAE) with the same
architecture, dtype and device but no weights worth the name (zeros: a compiled graph does
not depend on them), compiles them with the runner's warm-up call, and leaves the result in
the compile cache on disk, which both share. The runner then compiles from that cache (a
fraction of the time) while images of the shape ran eagerly all along.

The helper is ``python -m dreamforge.runners.compile_helper``: the runner's process is a
daemonic multiprocessing child, which may not start children of its own that way. It
reads its job (pickled) on stdin, inherits the environment (the cache's location among
it) and exits when its parent does.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from dreamforge.runners.compile_options import CompileOptions
from dreamforge.runners.twins import (
    Graphs,
    PromptShape,
    Shape,
    compiled_twins,
    graphs_so_far,
    warm_up,
)

# The longest a helper may take. A whole UNet compiled in 154 s on an H200; a helper past
# this is taken for hung (it would hold the compile thread, and every later shape's
# compile, for the worker's life) and killed.
HELPER_LIMIT_S = 1800.0


class HelperFailed(Exception):
    """The helper process could not compile; the runner compiles in process instead."""


@dataclass(frozen=True)
class HelperJob:
    modules: bytes  # torch.save of the UNet and VAE, their weights on "meta"
    scheduler: dict[str, Any]  # its config: warm_up makes a scheduler of its own
    device: str
    options: CompileOptions
    shape: Shape
    prompt: PromptShape


def weight_bytes(pipe: StableDiffusionXLPipeline) -> int:
    """What the helper's copy of the weights takes on the device."""
    modules = (pipe.unet, pipe.vae)
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def helper_job(pipe: StableDiffusionXLPipeline, options: CompileOptions, shape: Shape) -> HelperJob:
    """What the helper needs to compile as the runner would for ``shape``."""
    modules = io.BytesIO()
    torch.save({"unet": _weightless(pipe.unet), "vae": _weightless(pipe.vae)}, modules)
    return HelperJob(
        modules.getvalue(),
        dict(pipe.scheduler.config),
        str(pipe.unet.device),
        options,
        shape,
        PromptShape.of(pipe),
    )


class CompileHelper:
    """One compile in a helper process, started at once."""

    command: ClassVar[tuple[str, ...]] = (sys.executable, "-m", __name__)

    def __init__(self, job: HelperJob) -> None:
        self._job = job
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def result(self) -> Graphs:
        """Wait until it is done: the graphs it compiled or found in the cache. Raises
        ``HelperFailed`` if it did not compile, or not within ``HELPER_LIMIT_S``."""
        try:
            out, err = self._process.communicate(pickle.dumps(self._job), HELPER_LIMIT_S)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()
            raise HelperFailed(f"no answer within {HELPER_LIMIT_S:.0f}s; killed") from None
        # Its answer is its last line out; a library may have printed before it.
        lines = out.decode(errors="replace").strip().splitlines()
        said = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
        if self._process.returncode != 0 or "error" in said or not said:
            last = err.decode(errors="replace").strip().splitlines() or ["no output"]
            why = said.get("error", last[-1])
            raise HelperFailed(f"exit code {self._process.returncode}: {why}")
        return Graphs(**said)

    def kill(self) -> None:
        self._process.kill()


def _weightless(module: torch.nn.Module) -> Any:
    """A copy of ``module`` whose parameters are on the meta device (no data) and whose
    buffers, small and sometimes read (positions, say), are real and on the CPU."""
    memo: dict[int, Any] = {
        id(p): torch.nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
        for p in module.parameters()
    }
    memo |= {id(b): b.detach().to("cpu", copy=True) for b in module.buffers()}
    return copy.deepcopy(module, memo)


def _materialized(module: torch.nn.Module, device: str) -> Any:
    """``module`` with zeros for weights, on ``device``; a weight shared by two parts
    stays shared (the graph would differ otherwise)."""
    # By the id of the weightless one, kept alive with it so that no id is reused.
    made: dict[int, tuple[torch.nn.Parameter, torch.nn.Parameter]] = {}
    for part in module.modules():
        for name, p in list(part.named_parameters(recurse=False)):
            if id(p) not in made:
                zeros = torch.zeros(p.shape, dtype=p.dtype, device=device)
                made[id(p)] = (p, torch.nn.Parameter(zeros, p.requires_grad))
            setattr(part, name, made[id(p)][1])
    return module.to(device)


def _exit_with_parent() -> None:
    """A compile outlives no runner: it would hold the device's memory for nothing."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _compile(job: HelperJob) -> None:
    found = torch.load(io.BytesIO(job.modules), weights_only=False)
    pipe = StableDiffusionXLPipeline(
        unet=_materialized(found["unet"], job.device),
        vae=_materialized(found["vae"], job.device),
        scheduler=EulerDiscreteScheduler.from_config(job.scheduler),
        text_encoder=None,
        text_encoder_2=None,
        tokenizer=None,
        tokenizer_2=None,
    )
    warm_up(pipe, compiled_twins(pipe, job.options), job.shape, job.prompt)


def main() -> None:
    _exit_with_parent()
    job = pickle.load(sys.stdin.buffer)
    try:
        _compile(job)
    except Exception as exc:  # noqa: BLE001 - said to the runner, which compiles itself
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        sys.exit(1)
    print(json.dumps(dataclasses.asdict(graphs_so_far())))


if __name__ == "__main__":
    main()
