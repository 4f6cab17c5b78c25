"""What every runner does around the pixels: decode a parent image, resample, and write
the receipt that goes into each PNG."""

from __future__ import annotations

import io

from PIL import Image

from dreamforge.artifacts.receipts import ModelReceipt, ParentReceipt, Receipt
from dreamforge.runners.protocol import ItemToRender, ModelRef, RenderRequest


def parent_image(item: ItemToRender) -> Image.Image:
    assert item.parent is not None, "a chain step's items have parents"
    with Image.open(io.BytesIO(item.parent.png)) as image:
        return image.convert("RGB")


def lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _model_receipt(model: ModelRef) -> ModelReceipt:
    return ModelReceipt(id=model.id, sha256=model.sha256, source=model.source)


def receipt_for(
    request: RenderRequest,
    item: ItemToRender,
    versions: dict[str, str],
    device: str,
    dtype: str,
) -> Receipt:
    assert request.spec is not None
    parent = item.parent
    return Receipt(
        spec=item.spec or request.spec,
        seed=item.seed,
        step_index=request.step_index,
        step_type=request.step_type,
        item_index=item.index if item.item_index is None else item.item_index,
        model=_model_receipt(request.model),
        versions=versions,
        device=device,
        dtype=dtype,
        parent=ParentReceipt(key=parent.key, sha256=parent.sha256) if parent else None,
        chain_step=request.chain_step,
        step_model=_model_receipt(request.step_model) if request.step_model else None,
    )
