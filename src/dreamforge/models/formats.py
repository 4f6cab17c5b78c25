"""What a model on disk is: its format and its architecture, read without loading it.

A diffusers folder says what it is in ``model_index.json``; a single-file checkpoint is
recognised by the names of its tensors, read from the safetensors header alone (the same
keys diffusers looks for). Pickled weights (``.ckpt``, ``.pt``, ``.pth``, ``.bin``) can
run code when loaded: they are refused unless the operator opts in.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamforge.models.shipped import NoShippedConfig, config_for, safetensors_header

PICKLED_SUFFIXES = frozenset({".ckpt", ".pt", ".pth", ".bin"})
WEIGHT_SUFFIXES = frozenset({".safetensors"}) | PICKLED_SUFFIXES

# Tensor names that only one architecture's original checkpoints have (as in diffusers'
# single-file loader): SDXL's second text encoder, its refiner's, SD 1.x's CLIP.
SDXL_KEY = "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias"
SDXL_REFINER_KEY = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"
SD1_KEY = "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"
SD2_KEY = "cond_stage_model.model.transformer.resblocks.9.mlp.c_proj.bias"

PIPELINE_ARCHITECTURES = {
    "StableDiffusionXLPipeline": "sdxl",
    "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionPipeline": "sd1",
}
# Upscalers, by tensor names of the families spandrel loads (ESRGAN in its old and new
# layouts, Real-ESRGAN's compact net, SwinIR): every name in a set must be there.
UPSCALER_KEYS = (
    {"model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight"},
    {"conv_first.weight", "body.0.rdb1.conv1.weight"},
    {"conv_first.weight", "RRDB_trunk.0.RDB1.conv1.weight"},
    {"body.0.weight", "body.1.weight", "body.2.weight"},
    {"conv_first.weight", "layers.0.residual_group.blocks.0.norm1.weight"},
)
UPSCALER = "upscaler"
SUPPORTED = frozenset({"sdxl", UPSCALER})
NAMES = {"sdxl": "SDXL", "sdxl_refiner": "the SDXL refiner", "sd1": "SD 1.x", "sd2": "SD 2.x"}


def file_sha256(path: Path) -> str:
    """A file's sha256, read a megabyte at a time."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class UnsupportedModel(ValueError):
    """The files are not a model Dream Forge can run; the message says why and what to do."""


@dataclass(frozen=True)
class ModelFormat:
    format: str  # "diffusers" (a folder) or "single_file"
    architecture: str


def inspect_model(path: Path, allow_pickles: bool = False) -> ModelFormat:
    """The format and architecture of ``path``; raises ``UnsupportedModel``."""
    if path.is_dir():
        found = _diffusers_architecture(path)
        weights = [p for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES]
        if not weights:
            raise UnsupportedModel(f"{path} holds no weight files")
        _refuse_pickles([p for p in weights if p.suffix in PICKLED_SUFFIXES], allow_pickles)
        return ModelFormat("diffusers", _supported(found))
    if not path.is_file():
        raise UnsupportedModel(f"{path} does not exist")
    if path.suffix in PICKLED_SUFFIXES:
        _refuse_pickles([path], allow_pickles)
        raise UnsupportedModel(f"{path.name}: only .safetensors single files can be inspected")
    if path.suffix != ".safetensors":
        raise UnsupportedModel(
            f"{path.name} is neither a diffusers folder nor a .safetensors checkpoint"
        )
    header = _header(path)
    architecture = _supported(_checkpoint_architecture(header))
    if architecture == "sdxl":
        try:
            config_for(header)  # loadable offline only with a config shipped here
        except NoShippedConfig as exc:
            raise UnsupportedModel(f"{path.name}: {exc}") from exc
    return ModelFormat("single_file", architecture)


def _supported(architecture: str) -> str:
    if architecture not in SUPPORTED:
        name = NAMES.get(architecture, "an unknown architecture")
        raise UnsupportedModel(
            f"this is {name}: not supported yet (Dream Forge runs SDXL models and "
            "ESRGAN-family upscalers)"
        )
    return architecture


def _refuse_pickles(pickled: list[Path], allow_pickles: bool) -> None:
    if pickled and not allow_pickles:
        names = ", ".join(sorted(p.name for p in pickled)[:3])
        raise UnsupportedModel(
            f"pickled weights ({names}) can run code when loaded; use a .safetensors copy, "
            "or set DREAMFORGE_ALLOW_PICKLED_WEIGHTS=true if you trust their source"
        )


def _diffusers_architecture(folder: Path) -> str:
    index = folder / "model_index.json"
    if not index.is_file():
        raise UnsupportedModel(f"{folder} has no model_index.json: it is not a diffusers folder")
    try:
        pipeline = json.loads(index.read_text())["_class_name"]
    except (ValueError, KeyError) as exc:
        raise UnsupportedModel(f"{index} is not a diffusers model index") from exc
    return PIPELINE_ARCHITECTURES.get(pipeline, "unknown")


def _header(path: Path) -> dict[str, Any]:
    """The safetensors header: tensor names and shapes, read without loading a weight."""
    try:
        return safetensors_header(path)
    except ValueError as exc:
        raise UnsupportedModel(str(exc)) from exc


def _checkpoint_architecture(header: dict[str, Any]) -> str:
    keys = header.keys() - {"__metadata__"}
    for key, architecture in (
        (SDXL_KEY, "sdxl"),
        (SDXL_REFINER_KEY, "sdxl_refiner"),
        (SD2_KEY, "sd2"),
        (SD1_KEY, "sd1"),
    ):
        if key in keys:
            return architecture
    if any(wanted <= keys for wanted in UPSCALER_KEYS):
        return UPSCALER
    return "unknown"
