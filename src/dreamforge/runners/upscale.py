"""Upscaler models (the ESRGAN family and others spandrel loads), run over tiles so that
a large image fits the device."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import spandrel
import torch
from PIL import Image

from dreamforge.runners.device import DeviceChoice
from dreamforge.runners.protocol import ModelRef

# Each tile is run with this much of its neighbours around it, so that the seams the
# model cannot see past do not show.
CONTEXT_PX = 16


class Upscalers:
    """Upscaler models, loaded once and kept (they are small beside an SDXL pipeline)."""

    def __init__(self, device: DeviceChoice) -> None:
        self._device = device
        self._loaded: dict[tuple[str, str], spandrel.ImageModelDescriptor[torch.nn.Module]] = {}

    def get(self, model: ModelRef) -> tuple[spandrel.ImageModelDescriptor[torch.nn.Module], bool]:
        """The model, and whether it was already loaded."""
        key = (model.id, model.sha256)
        if key in self._loaded:
            return self._loaded[key], True
        loaded = spandrel.ModelLoader().load_from_file(model.path)
        if not isinstance(loaded, spandrel.ImageModelDescriptor):
            raise ValueError(f"model {model.id} is not an image-to-image upscaler")
        loaded.to(self._device.device).eval()
        self._loaded = {key: loaded}  # one at a time: a chain names one upscaler per step
        return loaded, False


def upscale_tiled(
    model: spandrel.ImageModelDescriptor[torch.nn.Module],
    image: Image.Image,
    tile_px: int,
    on_tile: Callable[[int, int], None],
) -> Image.Image:
    """``image`` through ``model``, ``tile_px`` square at a time; ``on_tile(done, count)``
    after each tile (it may raise to stop)."""
    device = next(iter(model.model.parameters())).device
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    source = pixels.permute(2, 0, 1).unsqueeze(0).to(device)
    _, _, height, width = source.shape
    scale = model.scale
    output = torch.zeros((1, 3, height * scale, width * scale), device=device)
    tiles = [(y, x) for y in range(0, height, tile_px) for x in range(0, width, tile_px)]
    with torch.inference_mode():
        for done, (y, x) in enumerate(tiles, start=1):
            y1, x1 = min(y + tile_px, height), min(x + tile_px, width)
            cy, cx = max(y - CONTEXT_PX, 0), max(x - CONTEXT_PX, 0)
            cy1, cx1 = min(y1 + CONTEXT_PX, height), min(x1 + CONTEXT_PX, width)
            result = model(source[:, :, cy:cy1, cx:cx1])
            top, left = (y - cy) * scale, (x - cx) * scale
            output[:, :, y * scale : y1 * scale, x * scale : x1 * scale] = result[
                :, :, top : top + (y1 - y) * scale, left : left + (x1 - x) * scale
            ]
            on_tile(done, len(tiles))
    array = (output[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255.0).round()
    return Image.fromarray(array.astype(np.uint8), "RGB")
