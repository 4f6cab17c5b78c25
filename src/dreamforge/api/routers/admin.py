"""Operator endpoints: the dead-letter queue."""

from __future__ import annotations

from fastapi import APIRouter

from dreamforge.api.deps import Admin, BaseUrl, DeadLetters, JobId
from dreamforge.api.routers.jobs import job_out
from dreamforge.api.schemas import (
    DeadLettersOut,
    JobOut,
    PurgedOut,
    access_responses,
    problem_responses,
)

router = APIRouter(prefix="/v1/admin/dlq", tags=["admin"], responses=access_responses())


@router.get(
    "",
    response_model=DeadLettersOut,
    summary="List the dead-letter queue",
    responses=problem_responses(503),
)
def list_dead_letters(dead_letters: DeadLetters, base: BaseUrl, _caller: Admin) -> DeadLettersOut:
    """Jobs that failed after transient failures (storage, database, a crashed pipeline,
    a lost worker) used up their attempts, newest first (at most 100)."""
    return DeadLettersOut(data=[job_out(job, base) for job in dead_letters.list()])


@router.post(
    "/{job_id}/retry",
    status_code=202,
    response_model=JobOut,
    summary="Send a dead-lettered job back to the queue",
    responses=problem_responses(404, 409, 503),
)
def retry_dead_letter(
    job_id: JobId, dead_letters: DeadLetters, base: BaseUrl, _caller: Admin
) -> JobOut:
    """The job gets one more attempt and keeps the images it stored; 409 if it is not in
    the dead-letter queue."""
    return job_out(dead_letters.retry(job_id), base)


@router.delete(
    "",
    response_model=PurgedOut,
    summary="Empty the dead-letter queue",
    responses=problem_responses(503),
)
def purge_dead_letters(dead_letters: DeadLetters, _caller: Admin) -> PurgedOut:
    """Takes every job out of the queue; they stay failed, with their error."""
    return PurgedOut(purged=dead_letters.purge())
