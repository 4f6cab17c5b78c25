"""Golden seed: the tiny model, this spec and this seed give these exact pixels on a CPU.

If a deliberate change to the tiny model or the runner moves the pixels, update the digest
in the same commit and say why. A change of torch or diffusers may move it too: that is
exactly what this test is here to notice.
"""

from __future__ import annotations

import hashlib
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import LiveServer
from tests.helpers import run_to_end

GOLDEN = [
    (
        {
            "prompt": "a lighthouse at dawn",
            "negative_prompt": "fog",
            "seed": 20261129,
            "steps": 4,
            "width": 64,
            "height": 64,
            "guidance_scale": 5.0,
            "scheduler": "euler",
        },
        "3240b6759672ee1cebe30c7ce0b9c10d8db43fa954e99f2a3b07eb458bf7e2cd",
    ),
    (
        {
            "prompt": "a harbour at night",
            "negative_prompt": "people, boats",
            "seed": 4242,
            "steps": 5,
            "width": 96,
            "height": 64,
            "guidance_scale": 7.5,
            "scheduler": "euler_a",
        },
        "fb103e29cb2fec2f0cdb7dbbda4ba059a8920147af2435b7c1acad413000aa65",
    ),
]


@pytest.mark.parametrize(("spec", "pixels_sha256"), GOLDEN, ids=["square", "landscape"])
def test_golden_seed_pixels(live: LiveServer, spec: dict[str, Any], pixels_sha256: str) -> None:
    job, _ = run_to_end(live.client, **spec)
    artifact = live.client.get(job["links"]["artifacts"]).json()["data"][0]
    assert artifact["seed"] == spec["seed"]
    image = Image.open(io.BytesIO(httpx.get(artifact["url"]).content)).convert("RGB")
    assert image.size == (spec["width"], spec["height"])
    assert hashlib.sha256(image.tobytes()).hexdigest() == pixels_sha256
