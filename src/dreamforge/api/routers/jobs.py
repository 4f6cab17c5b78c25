"""Creating, reading, listing and canceling jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from dreamforge.api import deps
from dreamforge.api.schemas import (
    SPEC_EXAMPLE,
    ErrorOut,
    JobLinks,
    JobListOut,
    JobOut,
    problem_responses,
)
from dreamforge.domain.errors import FieldProblem, InvalidRequest
from dreamforge.domain.jobs import JobRequest, JobStatus
from dreamforge.runtime import Runtime
from dreamforge.store.records import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

REQUEST_EXAMPLES = {
    "minimal": {
        "summary": "Only a prompt: everything else from the model's defaults",
        "value": {"prompt": "a lighthouse at dawn, oil on canvas"},
    },
    "full": {"summary": "Every field set", "value": SPEC_EXAMPLE},
}


def job_out(job: Job, base: str) -> JobOut:
    url = f"{base}/v1/jobs/{job.id}"
    return JobOut(
        id=job.id,
        status=job.status,
        progress=job.progress,
        stage=job.stage,
        spec=job.spec,
        error=ErrorOut(**job.error) if job.error else None,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        links=JobLinks(
            self=url,
            cancel=f"{url}/cancel",
            progress=f"{url}/progress",
            stream=f"{url}/progress/stream",
            logs=f"{url}/logs",
            artifacts=f"{url}/artifacts",
        ),
    )


Rt = Annotated[Runtime, Depends(deps.runtime)]


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Create a job",
    responses=problem_responses(422, 503),
)
def create_job(
    request: Request,
    response: Response,
    runtime: Rt,
    body: Annotated[JobRequest, Body(openapi_examples=REQUEST_EXAMPLES)],
) -> JobOut:
    """Queue a generation. Returns at once with the job; follow ``links.stream``."""
    job = runtime.service.submit(body)
    out = job_out(job, deps.base_url(request))
    response.headers["Location"] = out.links.self
    return out


@router.get(
    "",
    response_model=JobListOut,
    summary="List jobs, newest first",
    responses=problem_responses(422, 503),
)
def list_jobs(
    request: Request,
    runtime: Rt,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
) -> JobListOut:
    try:
        page = runtime.jobs.page(status, limit, cursor)
    except ValueError as exc:
        raise InvalidRequest(
            [
                FieldProblem(
                    "cursor",
                    "not a cursor this API issued",
                    "pass next_cursor from a previous page",
                )
            ]
        ) from exc
    base = deps.base_url(request)
    return JobListOut(data=[job_out(j, base) for j in page.jobs], next_cursor=page.next_cursor)


@router.get(
    "/{job_id}", response_model=JobOut, summary="Get a job", responses=problem_responses(404, 503)
)
def get_job(job_id: str, request: Request, runtime: Rt) -> JobOut:
    return job_out(runtime.service.get(job_id), deps.base_url(request))


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
    responses={
        202: {"model": JobOut, "description": "Running: it stops within one denoising step"},
        **problem_responses(404, 409, 503),
    },
)
def cancel_job(job_id: str, request: Request, response: Response, runtime: Rt) -> JobOut:
    """A queued job is canceled at once (200); a running one is asked to stop (202)."""
    job = runtime.service.cancel(job_id)
    if job.status is JobStatus.RUNNING:
        response.status_code = 202
    return job_out(job, deps.base_url(request))
