"""What the pipeline is asked to do: each image is what diffusers renders, on its own,
from the receipt's values. The bare diffusers calls here are written independently of
the runner (their own scheduler table, their own seeding), so a runner that swapped width
and height, ran plain Euler for ``euler_a`` or seeded items wrongly would not match."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)
from PIL import Image

from dreamforge.artifacts.receipts import read_png_text, read_receipt
from dreamforge.domain.jobs import Scheduler
from dreamforge.domain.records import Model
from dreamforge.runners.device import DeviceChoice, select_device
from dreamforge.runners.protocol import ItemRendered, ItemToRender, ModelRef, RenderRequest
from dreamforge.runners.sdxl import SdxlRunner
from tests.conftest import LiveServer
from tests.helpers import run_to_end, tiny_model_ref, tiny_spec

DIFFUSERS_SCHEDULERS = {
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "dpmpp_2m": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "heun": HeunDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}


class Bare:
    """The tiny model through diffusers alone, as a user would call it."""

    def __init__(self, model_dir: Path) -> None:
        self.pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, local_files_only=True)
        self.pipe.set_progress_bar_config(disable=True)
        self.default_scheduler = self.pipe.scheduler.config

    def pixels(self, spec: dict[str, Any], seed: int) -> bytes:
        scheduler = DIFFUSERS_SCHEDULERS[spec["scheduler"]]
        self.pipe.scheduler = scheduler.from_config(self.default_scheduler)
        image = self.pipe(
            prompt=spec["prompt"],
            negative_prompt=spec["negative_prompt"] or None,
            width=spec["width"],
            height=spec["height"],
            num_inference_steps=spec["steps"],
            guidance_scale=spec["guidance_scale"],
            generator=torch.Generator().manual_seed(seed),
        ).images[0]
        return bytes(image.convert("RGB").tobytes())


@pytest.fixture(scope="module")
def bare(tiny_model_dir: Path) -> Bare:
    return Bare(tiny_model_dir)


def png_pixels(png: bytes) -> tuple[tuple[int, int], bytes]:
    image = Image.open(io.BytesIO(png)).convert("RGB")
    return image.size, image.tobytes()


def render(runner: SdxlRunner, request: RenderRequest) -> bytes:
    """The one image the runner renders for ``request``, as PNG bytes."""
    images: list[ItemRendered] = []
    runner.generate(
        request, lambda m: images.append(m) if isinstance(m, ItemRendered) else None, bool
    )
    assert len(images) == 1
    return images[0].png


def test_each_scheduler_renders_what_diffusers_renders_with_it(
    tiny_model_dir: Path, bare: Bare
) -> None:
    runner = SdxlRunner(select_device("cpu"))
    model = tiny_model_ref(tiny_model_dir)
    rendered: dict[str, bytes] = {}
    for name in Scheduler:
        spec = tiny_spec(steps=3, scheduler=name, seed=31)
        _, pixels = png_pixels(render(runner, RenderRequest(spec, model, (ItemToRender(0, 31),))))
        assert pixels == bare.pixels(spec.model_dump(mode="json"), 31), name
        rendered[name.value] = pixels
    assert len(set(rendered.values())) == len(Scheduler), "two schedulers drew the same image"


def test_an_image_is_what_its_receipt_says(live: LiveServer, bare: Bare) -> None:
    """Non-square, a negative prompt, an ancestral sampler and a drawn seed: rendering the
    receipt's values again with diffusers gives the same pixels, at the same size."""
    job, _ = run_to_end(
        live.client,
        prompt="a tall tower",
        negative_prompt="clouds",
        width=64,
        height=96,
        steps=3,
        scheduler="euler_a",
    )
    artifact = live.client.get(job["links"]["artifacts"]).json()["data"][0]
    png = httpx.get(artifact["url"]).content
    receipt = read_receipt(png)
    size, pixels = png_pixels(png)
    assert size == (64, 96) and (artifact["width"], artifact["height"]) == (64, 96)
    assert receipt.seed == artifact["seed"] == job["spec"]["seed"]
    assert "Size: 64x96" in read_png_text(png)["parameters"]
    assert pixels == bare.pixels(receipt.spec.model_dump(mode="json"), receipt.seed)


def test_the_model_hash_is_the_hash_of_its_files(live: LiveServer, tiny_model_dir: Path) -> None:
    """Computed here from the files' bytes: each weight file's sha256, then the sha256 of
    the sorted ``path sha256`` lines (a single-file checkpoint's is the file's own)."""
    lines = []
    for folder, _, names in os.walk(tiny_model_dir):
        for name in names:
            if name.endswith(".safetensors"):
                path = Path(folder) / name
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                lines.append(f"{path.relative_to(tiny_model_dir)} {digest}\n")
    assert len(lines) == 4  # unet, vae and two text encoders
    expected = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()

    model = live.client.get("/v1/models/tiny-sdxl").json()
    assert model["sha256"] == expected
    job, _ = run_to_end(live.client, seed=1)
    artifact = live.client.get(job["links"]["artifacts"]).json()["data"][0]
    parameters = read_png_text(httpx.get(artifact["url"]).content)["parameters"]
    assert f"Model hash: {expected[:10]}," in parameters


def assert_renders_like(model: Model, original: Path) -> None:
    """A registered model renders, through the runner, what ``original`` (a diffusers
    folder) renders through bare diffusers: the same weights arrived, all of them."""
    spec = tiny_spec(prompt="a fox", scheduler=Scheduler.EULER, seed=3, model_id=model.id)
    request = RenderRequest(spec, ModelRef.of(model), (ItemToRender(0, 3),))
    png = render(SdxlRunner(select_device("cpu")), request)
    assert png_pixels(png)[1] == Bare(original).pixels(spec.model_dump(mode="json"), 3)


def test_a_half_precision_image_logs_nothing_about_its_vae_casts(tiny_model_dir: Path) -> None:
    """On a GPU the pipeline runs in fp16 and casts SDXL's VAE to fp32 and back for every
    image; diffusers' warnings about that (two an image) stay out of the service's log.
    fp16 runs on this CPU too, slowly."""
    runner = SdxlRunner(DeviceChoice(torch.device("cpu"), torch.float16))
    model = tiny_model_ref(tiny_model_dir)
    spec = tiny_spec(steps=2, seed=1, item_seeds=(1,))
    out: list[object] = []
    logged: list[logging.LogRecord] = []
    diffusers_log = logging.getLogger("diffusers")  # what its modules log reaches it
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    diffusers_log.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            request = RenderRequest(spec, model, (ItemToRender(0, 1),))
            runner.generate(request, out.append, bool)
    finally:
        diffusers_log.removeHandler(handler)
    assert any(isinstance(m, ItemRendered) for m in out)
    assert not [r for r in logged if "should be kept in float32" in r.getMessage()]
    assert not [w for w in caught if "upcast_vae" in str(w.message)]
