"""Listing a job's images and serving them behind signed URLs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from dreamforge.api import deps
from dreamforge.api.schemas import ArtifactListOut, ArtifactOut, problem_responses
from dreamforge.domain.errors import Forbidden, NotFound
from dreamforge.runtime import Runtime

router = APIRouter(prefix="/v1", tags=["artifacts"])
Rt = Annotated[Runtime, Depends(deps.runtime)]


@router.get(
    "/jobs/{job_id}/artifacts",
    response_model=ArtifactListOut,
    summary="A job's images, with signed URLs",
    responses=problem_responses(404, 503),
)
def list_artifacts(job_id: str, request: Request, runtime: Rt) -> ArtifactListOut:
    runtime.service.get(job_id)
    ttl = runtime.settings.artifact_url_ttl_s
    expires_at = datetime.now(UTC) + timedelta(seconds=ttl)
    base = deps.base_url(request)
    return ArtifactListOut(
        data=[
            ArtifactOut(
                key=a.key,
                content_type=a.content_type,
                size_bytes=a.size_bytes,
                sha256=a.sha256,
                width=a.width,
                height=a.height,
                seed=a.seed,
                step_index=a.step_index,
                step_type=a.step_type,
                item_index=a.item_index,
                url=runtime.storage.url(a.key, ttl, base),
                url_expires_at=expires_at,
            )
            for a in runtime.jobs.artifacts(job_id)
        ]
    )


@router.get(
    "/artifacts/{key:path}",
    summary="Download an artifact (signed URL)",
    response_class=Response,
    responses={
        200: {
            "description": "The PNG, receipt included",
            "content": {"image/png": {"example": "(binary PNG)"}},
        },
        **problem_responses(403, 404),
    },
)
def download(
    key: str,
    runtime: Rt,
    expires: Annotated[int, Query(description="From the signed URL")],
    signature: Annotated[str, Query(description="From the signed URL")],
) -> Response:
    if not runtime.signer.verify(key, expires, signature):
        raise Forbidden(
            "the URL's signature is invalid or it has expired; "
            "list the job's artifacts again for a fresh URL"
        )
    artifact = runtime.jobs.artifact_by_key(key)
    if artifact is None or not runtime.storage.exists(key):
        raise NotFound("artifact", key)
    return Response(
        runtime.storage.get(key),
        media_type=artifact.content_type,
        headers={"Cache-Control": "private, max-age=3600", "ETag": f'"{artifact.sha256}"'},
    )
