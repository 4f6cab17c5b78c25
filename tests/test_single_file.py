"""Single-file SDXL checkpoints (the format CivitAI ships) load with networking off: the
configs and CLIP tokenizers they need ship inside the package. The tiny model is written in
the original layout by Dream Forge's own exporter, so the round trip (export, add, load,
render) is checked pixel for pixel against the same weights as a diffusers folder."""

from __future__ import annotations

import itertools
import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from dreamforge.models.formats import SDXL_KEY
from dreamforge.models.shipped import (
    SHIPPED,
    UNET_CONV_IN,
    NoShippedConfig,
    ShippedConfig,
    config_for,
    safetensors_header,
)
from dreamforge.models.tiny import build_tiny_sdxl
from dreamforge.runners.single_file import clip_tokenizer, load_single_file, tokenizers
from tests.test_models import registry, run, safetensors_with
from tests.test_pipeline import assert_renders_like

SDXL_BASE = ShippedConfig("sdxl-base-1.0")
TINY = ShippedConfig("tiny-sdxl")


@pytest.fixture
def networking_off(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("networking is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_diffusers_alone_would_fetch_configs_for_a_single_file(
    tiny_single_file: Path, networking_off: None
) -> None:
    # The control for the test below: without shipped configs, loading goes to the Hub
    # (even with local_files_only), and fails with networking off.
    with pytest.raises(OSError, match="networking is off"):
        StableDiffusionXLPipeline.from_single_file(str(tiny_single_file), local_files_only=True)


def test_an_added_single_file_renders_what_its_folder_renders_with_networking_off(
    tmp_path: Path, tiny_single_file: Path, tiny_model_dir: Path, networking_off: None
) -> None:
    data = tmp_path / "data"
    checkpoint = shutil.copy(tiny_single_file, tmp_path / "My Model XL v2.safetensors")
    code, output = run("add", str(checkpoint), "--data-dir", str(data))
    assert code == 0, output
    model = registry(data).get("my-model-xl-v2")
    assert model is not None and (model.format, model.base) == ("single_file", "sdxl")
    assert Path(model.path).name == "My Model XL v2.safetensors"
    assert_renders_like(model, tiny_model_dir)  # every weight arrived, under its right name


def test_an_sdxl_checkpoint_of_shapes_no_shipped_config_fits_is_refused_at_add(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    checkpoint = safetensors_with(tmp_path / "odd.safetensors", SDXL_KEY, "x.weight")
    code, output = run("add", str(checkpoint), "--data-dir", str(data))
    assert code == 1 and "match no SDXL config shipped" in output, output
    assert registry(data).list() == []


def test_the_shipped_sdxl_config_builds_sdxl_with_its_published_parameter_counts() -> None:
    def parameters(module: object) -> int:
        return sum(p.numel() for p in module.parameters())  # type: ignore[attr-defined]

    with init_empty_weights():  # shapes only: nothing is allocated
        counts = (
            parameters(UNet2DConditionModel.from_config(SDXL_BASE.component("unet"))),
            parameters(AutoencoderKL.from_config(SDXL_BASE.component("vae"))),
            parameters(CLIPTextModel(CLIPTextConfig(**SDXL_BASE.component("text_encoder")))),
            parameters(
                CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_BASE.component("text_encoder_2")))
            ),
        )
    assert counts == (2_567_463_684, 83_653_863, 123_060_480, 694_659_840)


def test_the_shipped_clip_tokenizers_give_clips_ids_and_sdxls_padding() -> None:
    built = tokenizers(SDXL_BASE)
    first, second = built["tokenizer"], built["tokenizer_2"]
    ids = [49406, 320, 1125, 539, 320, 2368, 49407]  # "a photo of a cat", as CLIP has it
    assert first("A photo of a  cat")["input_ids"] == ids
    assert second("a photo of a cat")["input_ids"] == ids
    assert len(first) == 49408
    # SDXL's second encoder was trained padding with "!" (id 0), the first with the end token.
    padded = [t(["cat"], padding="max_length")["input_ids"][0] for t in (first, second)]
    assert (padded[0][-1], padded[1][-1], len(padded[0])) == (49407, 0, 77)
    assert clip_tokenizer("!").decode(ids[1:-1]) == "a photo of a cat"


def test_the_shipped_tiny_config_is_what_the_tiny_model_saves(tmp_path: Path) -> None:
    build_tiny_sdxl().save_pretrained(tmp_path, safe_serialization=True)
    versions = {"_diffusers_version", "transformers_version", "_name_or_path"}
    for config in sorted(TINY.folder.rglob("*.json")):
        if config.name == "tokenizers.json":
            continue
        shipped, saved = (
            {k: v for k, v in json.loads(p.read_text()).items() if k not in versions}
            for p in (config, tmp_path / config.relative_to(TINY.folder))
        )
        assert shipped == saved, config.relative_to(TINY.folder)


def test_each_shipped_config_is_told_apart_by_its_shapes() -> None:
    assert len({config.shapes() for config in SHIPPED}) == len(SHIPPED)


def test_an_inpainting_checkpoint_fits_no_shipped_config(tiny_single_file: Path) -> None:
    header = safetensors_header(tiny_single_file)
    assert config_for(header) == TINY
    conv_in = header[UNET_CONV_IN]
    conv_in["shape"] = [conv_in["shape"][0], 9, *conv_in["shape"][2:]]  # image + mask inputs
    with pytest.raises(NoShippedConfig, match="match no SDXL config"):
        config_for(header)


def test_a_single_files_unet_and_vae_go_to_the_device_as_they_are_read(
    tiny_single_file: Path,
) -> None:
    """Asked for the meta device, which holds no data: a weight first copied whole to the
    CPU would show up there."""
    pipe = load_single_file(tiny_single_file, torch.float32, torch.device("meta"))
    placed = itertools.chain(pipe.unet.parameters(), pipe.vae.parameters())
    assert {weight.device.type for weight in placed} == {"meta"}
