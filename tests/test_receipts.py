"""PNG receipts, read back the way existing tools read them."""

from __future__ import annotations

from PIL import Image

from dreamforge.artifacts.receipts import (
    ModelReceipt,
    Receipt,
    a1111_parameters,
    encode_png,
    read_png_text,
    read_receipt,
)
from dreamforge.domain.jobs import JobSpec, Scheduler

SPEC = JobSpec(
    prompt="château at night, ünïcode",
    negative_prompt="",
    width=64,
    height=64,
    steps=20,
    guidance_scale=7.0,
    scheduler=Scheduler.DPMPP_2M,
    seed=5,
    model_id="m",
)
RECEIPT = Receipt(
    spec=SPEC,
    seed=5,
    step_index=0,
    step_type="generate",
    item_index=0,
    model=ModelReceipt(id="m", sha256="abcdef0123456789" * 4, source="x"),
    versions={"dreamforge": "0.1.0"},
    device="cpu",
    dtype="float32",
)


def test_a1111_text_without_negative_prompt_has_no_negative_line() -> None:
    text = a1111_parameters(RECEIPT)
    assert text.splitlines() == [
        "château at night, ünïcode",
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 7, Seed: 5, Size: 64x64, "
        "Model hash: abcdef0123, Model: m, Version: dreamforge 0.1.0",
    ]


def test_receipts_survive_a_round_trip_through_png_bytes() -> None:
    png = encode_png(Image.new("RGB", (64, 64), "red"), RECEIPT)
    assert read_receipt(png) == RECEIPT
    assert read_png_text(png)["parameters"].startswith("château")


def test_the_same_image_and_receipt_give_the_same_bytes() -> None:
    image = Image.new("RGB", (64, 64), "blue")
    assert encode_png(image, RECEIPT) == encode_png(image.copy(), RECEIPT)
