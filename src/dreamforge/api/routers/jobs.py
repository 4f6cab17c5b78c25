"""Creating, reading, listing and canceling jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Query, Request, Response

from dreamforge.api.deps import BaseUrl, JobId, Jobs, Reader, Writer
from dreamforge.api.log_context import name_in_logs
from dreamforge.api.schemas import (
    SPEC_EXAMPLE,
    ErrorOut,
    JobLinks,
    JobListOut,
    JobOut,
    access_responses,
    problem_responses,
)
from dreamforge.domain.jobs import JobRequest, JobStatus
from dreamforge.domain.records import Job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=access_responses())

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
        error=ErrorOut(code=job.error.code, message=job.error.message) if job.error else None,
        attempts=job.attempts,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        dead_lettered_at=job.dead_lettered_at,
        links=JobLinks(
            self=url,
            cancel=f"{url}/cancel",
            progress=f"{url}/progress",
            stream=f"{url}/progress/stream",
            logs=f"{url}/logs",
            artifacts=f"{url}/artifacts",
        ),
    )


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    summary="Create a job",
    responses={
        **problem_responses(422, 503),
        429: {
            **problem_responses(429)[429],
            "headers": {
                name: {"description": text, "schema": {"type": "integer"}}
                for name, text in (
                    ("Retry-After", "Seconds to wait before sending it again"),
                    ("RateLimit-Limit", "The quota that was reached"),
                    ("RateLimit-Remaining", "What is left of it"),
                    ("RateLimit-Reset", "Seconds until more is allowed"),
                )
            },
        },
    },
)
def create_job(
    request: Request,
    response: Response,
    jobs: Jobs,
    base: BaseUrl,
    caller: Writer,
    body: Annotated[JobRequest, Body(openapi_examples=REQUEST_EXAMPLES)],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Retry safely: the same key with the same body returns the job it "
            "created (for 24 h); with another body, a 422 IDEMPOTENCY_KEY_REUSED.",
        ),
    ] = None,
) -> JobOut:
    """Queue a generation. Returns at once with the job; follow ``links.stream``."""
    out = job_out(jobs.submit(body, idempotency_key, caller.tenant), base)
    name_in_logs(request, job_id=out.id)
    response.headers["Location"] = out.links.self
    return out


@router.get(
    "",
    response_model=JobListOut,
    summary="List jobs, newest first",
    responses=problem_responses(422, 503),
)
def list_jobs(
    jobs: Jobs,
    base: BaseUrl,
    caller: Reader,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^[A-Za-z0-9_=-]+$",
            description="next_cursor of the previous page, as given (an opaque string)",
        ),
    ] = None,
) -> JobListOut:
    page = jobs.page(status, limit, cursor, caller.tenant)
    return JobListOut(data=[job_out(j, base) for j in page.jobs], next_cursor=page.next_cursor)


@router.get(
    "/{job_id}", response_model=JobOut, summary="Get a job", responses=problem_responses(404, 503)
)
def get_job(job_id: JobId, jobs: Jobs, base: BaseUrl, caller: Reader) -> JobOut:
    return job_out(jobs.get(job_id, caller.tenant), base)


@router.post(
    "/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
    responses={
        202: {"model": JobOut, "description": "Running: it stops within one denoising step"},
        **problem_responses(404, 409, 503),
    },
)
def cancel_job(
    job_id: JobId, response: Response, jobs: Jobs, base: BaseUrl, caller: Writer
) -> JobOut:
    """A queued job is canceled at once (200); a running one is asked to stop (202)."""
    job = jobs.cancel(job_id, caller.tenant)
    if job.status is JobStatus.RUNNING:
        response.status_code = 202
    return job_out(job, base)
