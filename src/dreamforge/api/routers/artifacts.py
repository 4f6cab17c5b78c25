"""Listing a job's images and serving them behind signed URLs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from dreamforge.api.deps import ArtifactKey, Artifacts, BaseUrl, JobId, Reader
from dreamforge.api.log_context import name_in_logs
from dreamforge.api.schemas import (
    ArtifactListOut,
    ArtifactOut,
    access_responses,
    problem_responses,
)
from dreamforge.services.artifacts import ArtifactLink

router = APIRouter(prefix="/v1", tags=["artifacts"])


@router.get(
    "/jobs/{job_id}/artifacts",
    response_model=ArtifactListOut,
    summary="A job's images, with signed URLs",
    responses={**problem_responses(404, 503), **access_responses()},
)
def list_artifacts(
    job_id: JobId, artifacts: Artifacts, base: BaseUrl, caller: Reader
) -> ArtifactListOut:
    links = artifacts.list(job_id, caller.tenant, base)
    return ArtifactListOut(data=[artifact_out(link) for link in links])


def artifact_out(link: ArtifactLink) -> ArtifactOut:
    a = link.artifact
    return ArtifactOut(
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
        url=link.url,
        url_expires_at=link.expires_at,
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
    request: Request,
    key: ArtifactKey,
    artifacts: Artifacts,
    expires: Annotated[int, Query(description="From the signed URL")],
    signature: Annotated[str, Query(description="From the signed URL")],
) -> Response:
    artifact, tenant, content = artifacts.open(key, expires, signature)
    name_in_logs(request, job_id=artifact.job_id, tenant=tenant)
    return Response(
        content,
        media_type=artifact.content_type,
        headers={"Cache-Control": "private, max-age=3600", "ETag": f'"{artifact.sha256}"'},
    )
