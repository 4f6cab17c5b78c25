"""The compiled graphs a worker keeps on disk across restarts: inductor's cache (a folder
of its own, which it reads and writes itself), the artifacts ``torch.compiler`` saves, and
the list of what they hold (``compiled.txt``).

The list lets the runner compile a shape it compiled in an earlier life straight from the
cache (seconds), without the helper process that a cold compile gets.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dreamforge.runners.compile_options import CompileOptions

if TYPE_CHECKING:  # the cache itself needs no diffusers, which takes seconds to import
    from diffusers import StableDiffusionXLPipeline

    from dreamforge.runners.twins import Shape


def compile_listing(pipe: StableDiffusionXLPipeline, parts: str, shape: Shape) -> str:
    """The line of ``compiled.txt`` that says the cache holds this compile. Graphs depend
    on the modules' code and architecture, not on their weights or where they were read
    from: models of one architecture share them."""
    import diffusers  # loaded already: it made ``pipe``

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
    """The cache in ``options.cache_dir``; with none, it holds nothing and keeps nothing.

    Saved artifacts are a file a compile (``artifacts/<listing's hash>.bin``), written
    right after it, for two ways torch saves and loads them (2.14): a save holds what the
    process compiled or read from inductor's cache, never what it loaded from saved
    artifacts, so one file for all, rewritten by a restarted worker, would lose every
    shape that life did not compile; and a save holds all the process saved before too,
    but a load keeps, of each kind of artifact, only the last save's part, so a file
    rewritten after each compile would give back only the last compile's graphs. A
    compile's own file gives back its graphs either way."""

    def __init__(self, options: CompileOptions) -> None:
        self._artifacts = options.artifacts
        self._list = options.compiled_list

    @property
    def saved(self) -> bool:
        """Whether an earlier life saved artifacts, for ``load`` to load."""
        return bool(self._saved_files())

    def load(self) -> None:
        """Into this process's compiler (a second or more: not on a job's path)."""
        for saved in self._saved_files():
            torch.compiler.load_cache_artifacts(saved.read_bytes())

    def holds(self, listing: str) -> bool:
        return listing in self._lines()

    def save(self, listing: str) -> None:
        """What this process compiled so far, ``listing`` the compile just done."""
        if self._artifacts is None:
            return
        saved = torch.compiler.save_cache_artifacts()
        if saved is None:
            return
        self._artifacts.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(listing.encode()).hexdigest()[:16]
        _write_whole(self._artifacts / f"{name}.bin", saved[0])
        self._add(listing)

    def _saved_files(self) -> list[Path]:
        if self._artifacts is None or not self._artifacts.is_dir():
            return []
        return sorted(self._artifacts.glob("*.bin"))

    def _add(self, listing: str) -> None:
        lines = self._lines()
        if self._list is None or listing in lines:
            return
        # Whole or not at all: a torn list would hide every line.
        _write_whole(self._list, "".join(f"{line}\n" for line in [*lines, listing]).encode())

    def _lines(self) -> list[str]:
        if self._list is None or not self._list.is_file():
            return []
        return self._list.read_text().splitlines()


def _write_whole(path: Path, data: bytes) -> None:
    """``data`` in ``path``, or what was there before if the process dies meanwhile."""
    partial = path.with_suffix(".partial")
    partial.write_bytes(data)
    partial.replace(path)
