"""Golden seed: the tiny model, this spec and this seed give these exact pixels on a CPU.

If a deliberate change to the tiny model or the runner moves the pixels, update the digest
in the same commit and say why. A change of torch or diffusers may move it too: that is
exactly what this test is here to notice.
"""

from __future__ import annotations

import hashlib
import io

import httpx
from PIL import Image

from tests.conftest import LiveServer
from tests.helpers import run_to_end

GOLDEN_SPEC = {
    "prompt": "a lighthouse at dawn",
    "negative_prompt": "fog",
    "seed": 20261129,
    "steps": 4,
    "width": 64,
    "height": 64,
    "guidance_scale": 5.0,
    "scheduler": "euler",
}
GOLDEN_PIXELS_SHA256 = "3240b6759672ee1cebe30c7ce0b9c10d8db43fa954e99f2a3b07eb458bf7e2cd"


def test_golden_seed_pixels(live: LiveServer) -> None:
    job, _ = run_to_end(live.client, **GOLDEN_SPEC)
    artifact = live.client.get(job["links"]["artifacts"]).json()["data"][0]
    image = Image.open(io.BytesIO(httpx.get(artifact["url"]).content)).convert("RGB")
    assert hashlib.sha256(image.tobytes()).hexdigest() == GOLDEN_PIXELS_SHA256
