"""Progress as a snapshot and as a live Server-Sent Events stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from dreamforge.api.deps import Events, JobId, Jobs, Reader, SsePing
from dreamforge.api.schemas import (
    MAX_SEQ,
    ErrorOut,
    ProgressOut,
    access_responses,
    problem_responses,
    sse_event_schema,
)
from dreamforge.api.wire import sse_frames
from dreamforge.domain.events import EventType
from dreamforge.domain.progress import STAGE_WEIGHTS
from dreamforge.events.follow import JobStream

router = APIRouter(prefix="/v1/jobs", tags=["progress"], responses=access_responses())

SSE_EXAMPLE = """id: 1
event: status
data: {"seq": 1, "type": "status", "ts": "2026-11-29T08:00:00Z", "status": "queued"}

event: progress
data: {"type": "progress", "ts": "2026-11-29T08:00:01Z", "progress": 0.3125, \
"stage": "denoising", "step_index": 0, "item_index": 0, "step": 1, "steps": 4}

id: 14
event: done
data: {"seq": 14, "type": "done", "ts": "2026-11-29T08:00:02Z", "status": "succeeded", \
"error": null}

"""


@router.get(
    "/{job_id}/progress",
    response_model=ProgressOut,
    summary="Progress snapshot",
    responses=problem_responses(404, 503),
)
def progress(job_id: JobId, jobs: Jobs, caller: Reader) -> ProgressOut:
    job = jobs.get(job_id, caller.tenant)
    return ProgressOut(
        job_id=job.id,
        status=job.status,
        progress=job.progress,
        stage=job.stage,
        stage_weights={stage.value: weight for stage, weight in STAGE_WEIGHTS.items()},
        error=ErrorOut(code=job.error.code, message=job.error.message) if job.error else None,
    )


@router.get(
    "/{job_id}/progress/stream",
    summary="Follow a job live (SSE)",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Events until the terminal `done` event; each `data:` is one of "
            "the `JobEvent` shapes",
            "content": {
                "text/event-stream": {
                    "schema": sse_event_schema("JobEvent", [t.value for t in EventType]),
                    "example": SSE_EXAMPLE,
                }
            },
        },
        **problem_responses(404, 503),
    },
)
async def stream(
    job_id: JobId,
    events: Events,
    ping_s: SsePing,
    caller: Reader,
    last_event_id: Annotated[
        int | None,
        Header(alias="Last-Event-ID", ge=0, le=MAX_SEQ, description="Resume after this id"),
    ] = None,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_SEQ, description="Same as Last-Event-ID")
    ] = None,
) -> EventSourceResponse:
    """Replays the job's events after ``Last-Event-ID`` (or from the start), then tails
    them live; a running job's stream also gets its current progress right after the
    replay. Denoising progress is live only: its events carry no ``id``. Idle streams get
    a comment heartbeat; the stream ends after ``done``, or at once when the job has
    ended and nothing is left after ``Last-Event-ID``."""
    start = last_event_id if last_event_id is not None else (after or 0)
    field = "Last-Event-ID" if last_event_id is not None else "after"
    # A 404 or 422 before the stream opens.
    job_stream = await events.open(job_id, start, field, caller.tenant)

    async def messages() -> AsyncIterator[bytes]:
        async for batch in job_stream:
            yield sse_frames(batch)

    return _Stream(job_stream, messages(), ping=ping_s)


class _Stream(EventSourceResponse):
    """Lets go of the job's stream when the response ends, however it ends: a client gone
    before the first byte leaves a generator that never ran, whose own cleanup never runs."""

    def __init__(self, job_stream: JobStream, content: AsyncIterator[bytes], ping: float) -> None:
        super().__init__(content, ping=ping)
        self._job_stream = job_stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job_stream.close()
