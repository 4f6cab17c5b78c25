"""A job's log lines as NDJSON."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response

from dreamforge.api.deps import Events, JobId, Reader
from dreamforge.api.schemas import MAX_SEQ, access_responses, problem_responses
from dreamforge.api.wire import ndjson_lines
from dreamforge.domain.errors import FieldProblem, InvalidRequest

router = APIRouter(prefix="/v1/jobs", tags=["logs"], responses=access_responses())

NDJSON = "application/x-ndjson"
LOGS_EXAMPLE = (
    '{"seq": 2, "type": "log", "ts": "2026-11-29T08:00:00Z", "level": "info", '
    '"message": "accepted: 1024x1024, 30 steps, seed 1234, model tiny-sdxl", "stage": "queued"}\n'
    '{"seq": 4, "type": "log", "ts": "2026-11-29T08:00:00.1Z", "level": "info", '
    '"message": "started on worker host:41:1a2b3c, attempt 1", "stage": "claimed"}\n'
)


def _parse_since(since: str) -> tuple[int, datetime | None]:
    """``since`` is a sequence number or an ISO 8601 timestamp."""
    if since.isdigit():
        if int(since) > MAX_SEQ:
            raise InvalidRequest(
                [
                    FieldProblem(
                        "since",
                        f"{since} is past any sequence number",
                        "pass a seq from a previous line",
                    )
                ]
            )
        return int(since), None
    try:
        return 0, datetime.fromisoformat(since.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(
            [
                FieldProblem(
                    "since",
                    f"{since!r} is neither a sequence number nor a timestamp",
                    "pass a seq from a previous line (e.g. 12) or an ISO 8601 time "
                    "(e.g. 2026-11-29T08:00:00Z)",
                )
            ]
        ) from exc


@router.get(
    "/{job_id}/logs",
    summary="Log lines (NDJSON)",
    response_class=Response,
    responses={
        200: {
            "description": "One JSON object a line",
            "content": {
                NDJSON: {
                    "schema": {"$ref": "#/components/schemas/LogEvent"},
                    "example": LOGS_EXAMPLE,
                }
            },
        },
        **problem_responses(404, 422, 503),
    },
)
def logs(
    job_id: JobId,
    events: Events,
    caller: Reader,
    tail: Annotated[int | None, Query(ge=1, le=10_000, description="Only the last N")] = None,
    since: Annotated[
        str | None,
        Query(
            max_length=64,
            description="After this seq (e.g. 12) or ISO 8601 time with a zone (e.g. "
            "2026-11-29T08:00:00Z)",
            examples=["12", "2026-11-29T08:00:00Z"],
        ),
    ] = None,
) -> Response:
    after, when = _parse_since(since) if since else (0, None)
    if when is not None and when.tzinfo is None:
        raise InvalidRequest(
            [
                FieldProblem(
                    "since",
                    "the timestamp has no time zone",
                    "add Z or an offset, e.g. 2026-11-29T08:00:00Z",
                )
            ]
        )
    lines = events.log_lines(job_id, caller.tenant, after, since=when, tail=tail)
    body = ndjson_lines(lines)
    return Response(body, media_type=NDJSON)
