"""PNG receipts, read back the way existing tools read them."""

from __future__ import annotations

import hashlib
import io
import signal
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from dreamforge.artifacts.receipts import (
    ModelReceipt,
    Receipt,
    a1111_parameters,
    encode_png,
    read_png_text,
    read_receipt,
)
from dreamforge.artifacts.seal import SealCheck, Sealer
from dreamforge.cli import app
from dreamforge.domain.jobs import JobSpec, Scheduler
from tests.helpers import read_stream, submit
from tests.processes import Serve

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


def test_a_seal_holds_until_pixels_or_receipt_change() -> None:
    sealer = Sealer(b"the service's key")
    png = encode_png(Image.new("RGB", (64, 64), "red"), RECEIPT)
    sealed = sealer.seal(png)
    assert sealer.check(sealed) is SealCheck.VALID
    assert sealer.seal(sealed) == sealed  # sealing again replaces, never stacks
    assert read_receipt(sealed) == RECEIPT  # tools still read it, the seal aside
    assert np.array_equal(
        np.asarray(Image.open(io.BytesIO(sealed))), np.full((64, 64, 3), (255, 0, 0))
    )
    assert sealer.check(png) is SealCheck.ABSENT
    assert Sealer(b"another service's key").check(sealed) is SealCheck.BROKEN
    assert sealer.check(b"GIF89a") is SealCheck.NOT_PNG

    # One pixel changed, then saved the way an editor would, with the receipt kept.
    image = Image.open(io.BytesIO(sealed))
    image.load()
    image.putpixel((3, 3), (254, 0, 0))
    info = PngInfo()
    for keyword, text in image.text.items():
        info.add_text(keyword, text)
    edited = io.BytesIO()
    image.save(edited, format="PNG", pnginfo=info)
    assert sealer.check(edited.getvalue()) is SealCheck.BROKEN

    # The receipt changed, the pixels not: the seed rewritten in place.
    forged = sealed.replace(b'"seed":5', b'"seed":6', 1)
    assert forged != sealed and sealer.check(forged) is SealCheck.BROKEN


def test_receipt_verify_says_what_made_an_image_and_whether_it_is_untouched(
    tmp_path: Path,
) -> None:
    server = Serve(tmp_path / "data", tmp_path / "serve.log")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            job = submit(client, prompt="a sealed lighthouse", seed=77)
            read_stream(client, job["id"])
            artifact = client.get(job["links"]["artifacts"]).json()["data"][0]
            png = httpx.get(artifact["url"]).content
    finally:
        server.stop(signal.SIGTERM)
    assert hashlib.sha256(png).hexdigest() == artifact["sha256"]  # the sealed bytes
    image = tmp_path / "image.png"
    image.write_bytes(png)
    runner = CliRunner()
    verify = ["receipt", "verify", str(image), "--data-dir", str(tmp_path / "data")]
    good = runner.invoke(app, verify)
    assert good.exit_code == 0, good.output
    assert "seal: valid" in good.output and "matches the registry" in good.output
    assert "prompt: a sealed lighthouse" in good.output and "seed 77" in good.output

    image.write_bytes(png.replace(b"a sealed lighthouse", b"a sealed lightHOUSE"))
    edited = runner.invoke(app, verify)
    assert edited.exit_code == 1 and "seal: broken" in edited.output

    elsewhere = [
        "receipt",
        "verify",
        str(tmp_path / "image.png"),
        "--data-dir",
        str(tmp_path / "other"),
    ]
    image.write_bytes(png)
    other = runner.invoke(app, elsewhere)  # another service: its own key, its own registry
    assert other.exit_code == 1 and "seal: broken" in other.output
