"""The compiled graphs a worker keeps on disk across restarts: inductor's cache (a folder
of its own, which it reads and writes itself), the artifacts ``torch.compiler`` saves, and
the list of what they hold (``compiled.txt``).

The list lets the runner compile a shape it compiled in an earlier life straight from the
cache (seconds), without the helper process that a cold compile gets.
"""

from __future__ import annotations

import hashlib
import json

import diffusers
import torch
from diffusers import StableDiffusionXLPipeline

from dreamforge.runners.compile_options import CompileOptions
from dreamforge.runners.twins import Shape


def compile_listing(pipe: StableDiffusionXLPipeline, parts: str, shape: Shape) -> str:
    """The line of ``compiled.txt`` that says the cache holds this compile. Graphs depend
    on the modules' code and architecture, not on their weights or where they were read
    from: models of one architecture share them."""
    unet, vae = pipe.unet, pipe.vae
    # Not the config's private keys: the folder it was read from, the diffusers that
    # saved it, which values were defaults.
    configs = [
        {"class": type(module).__name__} | {k: v for k, v in module.config.items() if k[0] != "_"}
        for module in (unet, vae)
    ]
    described = json.dumps(configs, sort_keys=True, default=str)
    architecture = hashlib.sha256(described.encode()).hexdigest()[:16]
    return (
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, {unet.device.type}, "
        f"{unet.dtype}, architecture {architecture}: {parts} for {shape}"
    )


class CompileCache:
    """The cache in ``options.cache_dir``; with none, it holds nothing and keeps nothing."""

    def __init__(self, options: CompileOptions) -> None:
        self._artifacts = options.artifacts
        self._list = options.compiled_list

    @property
    def saved(self) -> bool:
        """Whether an earlier life saved artifacts, for ``load`` to load."""
        return self._artifacts is not None and self._artifacts.is_file()

    def load(self) -> None:
        """Into this process's compiler (a second or more: not on a job's path)."""
        if self._artifacts is not None and self.saved:
            torch.compiler.load_cache_artifacts(self._artifacts.read_bytes())

    def holds(self, listing: str) -> bool:
        return listing in self._lines()

    def save(self, listing: str) -> None:
        """What this process compiled so far, ``listing`` the compile just done."""
        if self._artifacts is None:
            return
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return
        self._artifacts.parent.mkdir(parents=True, exist_ok=True)
        self._artifacts.write_bytes(saved[0])
        self._add(listing)

    def _add(self, listing: str) -> None:
        lines = self._lines()
        if self._list is None or listing in lines:
            return
        partial = self._list.with_suffix(".partial")
        partial.write_text("\n".join([*lines, listing]) + "\n")
        partial.replace(self._list)  # whole or not at all: a torn list would hide every line

    def _lines(self) -> list[str]:
        if self._list is None or not self._list.is_file():
            return []
        return self._list.read_text().splitlines()
