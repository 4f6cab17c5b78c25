"""Receipts: how an image was made, written into the PNG itself.

Two text chunks: ``parameters`` in AUTOMATIC1111's format, which A1111, ComfyUI, InvokeAI
and CivitAI read, and ``dreamforge`` with the full JSON receipt. Nothing in a receipt varies
between runs of the same spec (no job id, no clock), so the PNG bytes are reproducible.
"""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel, Field

from dreamforge.domain.chains import RefineStep, UpscaleStep
from dreamforge.domain.jobs import SAMPLER_NAMES, JobSpec

RECEIPT_CHUNK = "dreamforge"
A1111_CHUNK = "parameters"


class ModelReceipt(BaseModel):
    id: str
    sha256: str
    source: str


class ParentReceipt(BaseModel):
    """The image a chain step started from."""

    key: str
    sha256: str


class Receipt(BaseModel):
    """Everything needed to make the same image again; a chain step's image also names
    the image it started from, so that its whole history is in the file."""

    spec: JobSpec
    seed: int
    step_index: int
    step_type: str
    item_index: int
    model: ModelReceipt  # the job's SDXL model
    versions: dict[str, str]
    device: str
    dtype: str
    parent: ParentReceipt | None = None
    chain_step: UpscaleStep | RefineStep | None = None
    step_model: ModelReceipt | None = Field(
        None, description="The model this chain step ran: the upscaler, or refine's own."
    )
    compiled: bool = Field(False, description="Denoised by the compiled UNet, not eagerly.")


def a1111_parameters(receipt: Receipt) -> str:
    spec = receipt.spec
    lines = [spec.prompt]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    settings = [
        f"Steps: {spec.steps}",
        f"Sampler: {SAMPLER_NAMES[spec.scheduler]}",
        f"CFG scale: {spec.guidance_scale:g}",
        f"Seed: {receipt.seed}",
        f"Size: {spec.width}x{spec.height}",
        f"Model hash: {receipt.model.sha256[:10]}",
        f"Model: {receipt.model.id}",
        *_chain_parameters(receipt),
        f"Version: dreamforge {receipt.versions.get('dreamforge', '')}",
    ]
    lines.append(", ".join(settings))
    return "\n".join(lines)


def _chain_parameters(receipt: Receipt) -> list[str]:
    """A chain step's settings by the names A1111 gives its hires fix."""
    step = receipt.chain_step
    if isinstance(step, UpscaleStep):
        upscaler = receipt.step_model.id if receipt.step_model else "Lanczos"
        return [f"Hires upscale: {step.scale:g}", f"Hires upscaler: {upscaler}"]
    if isinstance(step, RefineStep):
        return [f"Hires steps: {step.steps}", f"Denoising strength: {step.strength:g}"]
    return []


def encode_png(image: Image.Image, receipt: Receipt) -> bytes:
    info = PngInfo()
    info.add_text(A1111_CHUNK, a1111_parameters(receipt))
    info.add_text(RECEIPT_CHUNK, receipt.model_dump_json())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_png_text(data: bytes) -> dict[str, Any]:
    """The text chunks of a PNG, as PIL (and so most tools) see them."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return dict(getattr(image, "text", {}))


def read_receipt(data: bytes) -> Receipt:
    return Receipt.model_validate(json.loads(read_png_text(data)[RECEIPT_CHUNK]))
