"""How the SDXL runner compiles (``runners/compiled.py``), as the settings say: a value the
worker hands to its runner process, so it imports neither torch nor diffusers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CompileWhen = Literal["auto", "on", "off"]
CompileScope = Literal["regions", "unet"]


@dataclass(frozen=True)
class CompileOptions:
    """``when``: auto (on CUDA only), on, off. ``scope``: the UNet's transformer blocks
    (regions) or the whole UNet; ``vae``: its decoder too. Compiled graphs are kept in
    ``cache_dir`` across restarts."""

    when: CompileWhen = "off"
    scope: CompileScope = "regions"
    vae: bool = False
    cache_dir: Path | None = None

    def wanted_on(self, device_type: str) -> bool:
        return self.when == "on" or (self.when == "auto" and device_type == "cuda")

    @property
    def artifacts(self) -> Path | None:
        """Where ``torch.compiler.save_cache_artifacts`` keeps what it saved: a file a
        compile (see ``runners/compile_cache.py``)."""
        return self.cache_dir / "artifacts" if self.cache_dir else None

    @property
    def compiled_list(self) -> Path | None:
        """What the cache holds graphs for: one line an architecture, parts and shape."""
        return self.cache_dir / "compiled.txt" if self.cache_dir else None

    @property
    def inductor_cache(self) -> Path | None:
        return self.cache_dir / "inductor" if self.cache_dir else None


EAGER = CompileOptions()  # nothing compiled
