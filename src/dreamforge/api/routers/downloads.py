"""Models downloaded in the background, on the io queue, followed like jobs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from sse_starlette import EventSourceResponse

from dreamforge.api.deps import BaseUrl, DownloadId, Downloads, ModelAdmin, SsePing
from dreamforge.api.schemas import (
    DownloadLinks,
    DownloadListOut,
    DownloadOut,
    ModelSourceIn,
    access_responses,
    problem_responses,
    sse_event_schema,
)
from dreamforge.domain.records import Download

router = APIRouter(prefix="/v1", tags=["models"], responses=access_responses())

STREAM_EXAMPLE = """event: download
data: {"id": "5f1d2c3b-…", "status": "running", "bytes_done": 2147483648, \
"bytes_total": 6938041144, …}

event: download
data: {"id": "5f1d2c3b-…", "status": "succeeded", "model_id": "juggernaut-xl", …}

"""


def download_out(download: Download, base: str) -> DownloadOut:
    url = f"{base}/v1/downloads/{download.id}"
    model = f"{base}/v1/models/{download.model_id}" if download.model_id else None
    return DownloadOut(
        id=download.id,
        source=download.source,
        model_id=download.model_id,
        status=download.status.value,
        bytes_done=download.bytes_done,
        bytes_total=download.bytes_total,
        error=download.error,
        created_at=download.created_at,
        started_at=download.started_at,
        finished_at=download.finished_at,
        links=DownloadLinks(self=url, stream=f"{url}/stream", model=model),
    )


@router.post(
    "/models",
    status_code=202,
    response_model=DownloadOut,
    summary="Download a model into the registry",
    responses=problem_responses(422, 503),
)
def add_model(
    body: ModelSourceIn,
    downloads: Downloads,
    base: BaseUrl,
    response: Response,
    caller: ModelAdmin,
) -> DownloadOut:
    """Queues the download on the io queue and returns at once; follow ``links.stream``.
    Every file is checked against the hash its source declares before the model is
    registered; nothing is registered when a check fails."""
    out = download_out(downloads.submit(body.source, body.id, caller.tenant), base)
    response.headers["Location"] = out.links.self
    return out


@router.get(
    "/downloads",
    response_model=DownloadListOut,
    summary="Recent downloads, newest first",
    responses=problem_responses(422, 503),
)
def list_downloads(
    downloads: Downloads,
    base: BaseUrl,
    caller: ModelAdmin,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> DownloadListOut:
    return DownloadListOut(
        data=[download_out(d, base) for d in downloads.recent(caller.tenant, limit)]
    )


@router.get(
    "/downloads/{download_id}",
    response_model=DownloadOut,
    summary="A download's progress",
    responses=problem_responses(404, 503),
)
def get_download(
    download_id: DownloadId, downloads: Downloads, base: BaseUrl, caller: ModelAdmin
) -> DownloadOut:
    return download_out(downloads.get(download_id, caller.tenant), base)


@router.get(
    "/downloads/{download_id}/stream",
    summary="Follow a download (SSE)",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "The download now, then at each change, until it has ended",
            "content": {
                "text/event-stream": {
                    "schema": sse_event_schema("DownloadOut", ["download"]),
                    "example": STREAM_EXAMPLE,
                }
            },
        },
        **problem_responses(404, 503),
    },
)
async def stream_download(
    download_id: DownloadId,
    downloads: Downloads,
    base: BaseUrl,
    ping_s: SsePing,
    caller: ModelAdmin,
) -> EventSourceResponse:
    await run_in_threadpool(downloads.get, download_id, caller.tenant)  # 404 before it opens

    async def messages() -> AsyncIterator[dict[str, str]]:
        async for download in downloads.follow(download_id, caller.tenant):
            yield {"event": "download", "data": download_out(download, base).model_dump_json()}

    return EventSourceResponse(messages(), ping=ping_s)
