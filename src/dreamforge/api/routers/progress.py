"""Progress as a snapshot and as a live Server-Sent Events stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import closing
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse, ServerSentEvent

from dreamforge.api import deps
from dreamforge.api.schemas import ErrorOut, ProgressOut, problem_responses
from dreamforge.domain.events import EventType
from dreamforge.domain.progress import STAGE_WEIGHTS
from dreamforge.events.notifier import Subscription
from dreamforge.runtime import Runtime
from dreamforge.store.records import JobEvent

router = APIRouter(prefix="/v1/jobs", tags=["progress"])
Rt = Annotated[Runtime, Depends(deps.runtime)]

# Streams re-read the log when nothing arrived for this long, as a safety net.
POLL_S = 2.0

SSE_EXAMPLE = """id: 1
event: status
data: {"seq": 1, "type": "status", "ts": "2026-11-29T08:00:00Z", "status": "queued"}

id: 7
event: progress
data: {"seq": 7, "type": "progress", "ts": "2026-11-29T08:00:01Z", "progress": 0.3125, \
"stage": "denoising", "item_index": 0, "step": 1, "steps": 4}

id: 18
event: done
data: {"seq": 18, "type": "done", "ts": "2026-11-29T08:00:02Z", "status": "succeeded", \
"error": null}

"""


def event_payload(event: JobEvent) -> dict[str, object]:
    return {
        "seq": event.seq,
        "type": event.type.value,
        "ts": event.created_at.isoformat().replace("+00:00", "Z"),
        **event.data,
    }


async def _follow(
    runtime: Runtime, job_id: str, after: int, subscription: Subscription
) -> AsyncIterator[JobEvent]:
    """The job's events after ``after``, in order, each once, until ``done``.

    Live events come from the notifier; the log fills any gap (a reconnect, a missed
    publish) and is re-read when nothing arrives for a while.
    """
    batch = await run_in_threadpool(runtime.jobs.events, job_id, after)
    while True:
        for event in batch:
            if event.seq <= after:
                continue
            if event.seq > after + 1:  # a gap: the log has what was missed
                break
            after = event.seq
            yield event
            if event.type is EventType.DONE:
                return
        else:
            batch = await subscription.wait(POLL_S)
            if batch:
                continue
        batch = await run_in_threadpool(runtime.jobs.events, job_id, after)


@router.get(
    "/{job_id}/progress",
    response_model=ProgressOut,
    summary="Progress snapshot",
    responses=problem_responses(404, 503),
)
def progress(job_id: str, runtime: Rt) -> ProgressOut:
    job = runtime.service.get(job_id)
    return ProgressOut(
        job_id=job.id,
        status=job.status,
        progress=job.progress,
        stage=job.stage,
        stage_weights={stage.value: weight for stage, weight in STAGE_WEIGHTS.items()},
        error=ErrorOut(**job.error) if job.error else None,
    )


@router.get(
    "/{job_id}/progress/stream",
    summary="Follow a job live (SSE)",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "Events until the terminal `done` event",
            "content": {"text/event-stream": {"example": SSE_EXAMPLE}},
        },
        **problem_responses(404, 503),
    },
)
async def stream(
    job_id: str,
    runtime: Rt,
    last_event_id: Annotated[int | None, Header(ge=0, description="Resume after this id")] = None,
    after: Annotated[int | None, Query(ge=0, description="Same as Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Replays the job's events after ``Last-Event-ID`` (or from the start), then tails
    them live. Idle streams get a comment heartbeat; the stream ends after ``done``."""
    await run_in_threadpool(runtime.service.get, job_id)  # 404 before the stream opens
    start = last_event_id if last_event_id is not None else (after or 0)

    async def events() -> AsyncIterator[ServerSentEvent]:
        # Subscribe before reading the log, so nothing written in between is missed.
        with closing(runtime.notifier.subscribe(job_id)) as subscription:
            async for event in _follow(runtime, job_id, start, subscription):
                yield ServerSentEvent(
                    id=str(event.seq), event=event.type.value, data=json.dumps(event_payload(event))
                )

    return EventSourceResponse(events(), ping=runtime.settings.sse_ping_s)
