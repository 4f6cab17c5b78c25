"""The configs that single-file checkpoints load with, shipped inside the package.

A single ``.safetensors`` checkpoint (CivitAI's format) holds weights but no configs: diffusers
would fetch them from the Hub when it loads one, which an offline worker cannot. Dream Forge
ships the configs of the architectures it runs under ``configs/`` (SDXL base 1.0, which
fine-tunes such as Juggernaut, Pony and Illustrious share, and the tiny test model) and
picks the one whose shapes match the checkpoint's tensors, read from its header alone.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

CONFIGS = Path(__file__).parent / "configs"
CLIP_MERGES = CONFIGS / "clip-bpe-merges.txt.gz"


@dataclass(frozen=True)
class Telltale:
    """A tensor's size along one axis, and the config value it must equal."""

    tensor: str
    axis: int
    component: str
    key: str
    index: int | None = None  # into a list value


UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
TEXT_2_TOKENS = "conditioner.embedders.1.model.token_embedding.weight"
TELLTALES = (
    Telltale(UNET_CONV_IN, 0, "unet", "block_out_channels", 0),
    Telltale(UNET_CONV_IN, 1, "unet", "in_channels"),  # 9 for inpainting: not this config
    Telltale("first_stage_model.encoder.conv_in.weight", 0, "vae", "block_out_channels", 0),
    Telltale(
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        1,
        "text_encoder",
        "hidden_size",
    ),
    Telltale(TEXT_2_TOKENS, 0, "text_encoder_2", "vocab_size"),
    Telltale(TEXT_2_TOKENS, 1, "text_encoder_2", "hidden_size"),
)


class NoShippedConfig(ValueError):
    """A single-file checkpoint whose shapes match none of the shipped configs."""


@dataclass(frozen=True)
class ShippedConfig:
    name: str

    @property
    def folder(self) -> Path:
        """A diffusers folder without weights: model_index.json and each component's config."""
        return CONFIGS / self.name

    def component(self, name: str) -> dict[str, Any]:
        folder = self.folder / name
        config = folder / ("scheduler_config.json" if name == "scheduler" else "config.json")
        loaded: dict[str, Any] = json.loads(config.read_text())
        return loaded

    def tokenizers(self) -> dict[str, dict[str, str]]:
        """How to build each tokenizer: its ``vocabulary`` and ``pad_token``."""
        built: dict[str, dict[str, str]] = json.loads((self.folder / "tokenizers.json").read_text())
        return built

    def shapes(self) -> tuple[int, ...]:
        picked = []
        for telltale in TELLTALES:
            value = self.component(telltale.component)[telltale.key]
            picked.append(value if telltale.index is None else value[telltale.index])
        return tuple(picked)


SHIPPED = (ShippedConfig("sdxl-base-1.0"), ShippedConfig("tiny-sdxl"))


def safetensors_header(path: Path) -> dict[str, Any]:
    """A safetensors file's JSON header: each tensor's dtype, shape and offsets."""
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError(f"{path.name} is not a safetensors file (too short)")
        (length,) = struct.unpack("<Q", head)
        if length > 100_000_000:
            raise ValueError(f"{path.name} is not a safetensors file (header too large)")
        try:
            header: dict[str, Any] = json.loads(handle.read(length))
        except ValueError as exc:
            raise ValueError(f"{path.name} is not a safetensors file") from exc
    return header


def checkpoint_shapes(header: dict[str, Any]) -> tuple[int, ...] | None:
    """The shapes that pick a config, or None when a tensor that tells is missing."""
    try:
        return tuple(header[t.tensor]["shape"][t.axis] for t in TELLTALES)
    except (KeyError, IndexError, TypeError):
        return None


@cache
def _by_shapes() -> dict[tuple[int, ...], ShippedConfig]:
    return {config.shapes(): config for config in SHIPPED}


def config_for(header: dict[str, Any]) -> ShippedConfig:
    """The shipped config that an SDXL single-file checkpoint's tensors fit."""
    shapes = checkpoint_shapes(header)
    found = _by_shapes().get(shapes) if shapes is not None else None
    if found is None:
        raise NoShippedConfig(
            f"its shapes {shapes} match no SDXL config shipped with Dream Forge "
            f"({', '.join(c.name for c in SHIPPED)}); convert it to a diffusers folder and "
            "add that instead"
        )
    return found
