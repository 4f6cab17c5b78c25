"""The model registry, read-only."""

from __future__ import annotations

from fastapi import APIRouter

from dreamforge.api.deps import ModelId, Models, Reader
from dreamforge.api.schemas import (
    ModelFileOut,
    ModelListOut,
    ModelOut,
    access_responses,
    problem_responses,
)
from dreamforge.domain.errors import ErrorCode, NotFound
from dreamforge.domain.records import Model

router = APIRouter(prefix="/v1/models", tags=["models"], responses=access_responses())


def model_out(model: Model) -> ModelOut:
    return ModelOut(
        id=model.id,
        source=model.source,
        revision=model.revision,
        format=model.format,
        base=model.base,
        sha256=model.sha256,
        size_bytes=model.size_bytes,
        files=[
            ModelFileOut(path=f.path, sha256=f.sha256, size_bytes=f.size_bytes) for f in model.files
        ],
        status=model.status,
        provenance=model.provenance,
        defaults=model.defaults,
        created_at=model.created_at,
    )


@router.get(
    "", response_model=ModelListOut, summary="List models", responses=problem_responses(503)
)
def list_models(models: Models, _caller: Reader) -> ModelListOut:
    return ModelListOut(data=[model_out(m) for m in models.list()])


@router.get(
    "/{model_id}",
    response_model=ModelOut,
    summary="Get a model",
    responses=problem_responses(404, 503),
)
def get_model(model_id: ModelId, models: Models, _caller: Reader) -> ModelOut:
    model = models.get(model_id)
    if model is None:
        raise NotFound("model", model_id, code=ErrorCode.MODEL_NOT_FOUND)
    return model_out(model)
