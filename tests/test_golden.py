"""Golden seed: the tiny model, this spec and this seed give these pixels on a CPU (to
within a level: see ``assert_matches_golden``).

If a deliberate change to the tiny model or the runner moves the pixels, write the golden
images again in the same commit and say why. A change of torch or diffusers may move them
too: that is exactly what this test is here to notice.
"""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import LiveServer
from tests.helpers import assert_matches_golden, run_to_end

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
        "square",
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
        "landscape",
    ),
]


@pytest.mark.parametrize(("spec", "golden"), GOLDEN, ids=["square", "landscape"])
def test_golden_seed_pixels(live: LiveServer, spec: dict[str, Any], golden: str) -> None:
    job, _ = run_to_end(live.client, **spec)
    artifact = live.client.get(job["links"]["artifacts"]).json()["data"][0]
    assert artifact["seed"] == spec["seed"]
    png = httpx.get(artifact["url"]).content
    assert Image.open(io.BytesIO(png)).size == (spec["width"], spec["height"])
    assert_matches_golden(png, golden)
