"""What the compile cache on disk says it holds (``compiled.txt``): a listing a compile,
by the modules' code and architecture, so that a model of the same architecture, read
from any folder, compiles from the cache without a helper process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from diffusers import StableDiffusionXLPipeline

from dreamforge.runners.compile_cache import compile_listing
from dreamforge.runners.twins import Shape

SHAPE = Shape(64, 64, 1, guided=True)


def listing(model_dir: Path) -> str:
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, local_files_only=True)
    return compile_listing(pipe, "the UNet by regions", SHAPE)


def test_the_same_architecture_read_from_another_folder_is_listed_alike(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    elsewhere = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    assert listing(elsewhere) == listing(tiny_model_dir)


def test_another_architecture_is_listed_apart(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    config_file = other / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["upcast_attention"] = not config.get("upcast_attention", False)  # same weights
    config_file.write_text(json.dumps(config))
    assert listing(other) != listing(tiny_model_dir)
