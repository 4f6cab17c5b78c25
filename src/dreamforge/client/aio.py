"""The asyncio client: ``Client``'s methods, awaited."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from httpx_sse import aconnect_sse

from dreamforge.api.schemas import ArtifactOut, JobListOut, JobOut, ModelListOut
from dreamforge.client.calls import (
    API_KEY_ENV,
    RECONNECT_S,
    RECONNECTS,
    Call,
    Calls,
    Event,
    artifact_path,
    checked,
    default_url,
    headers_for,
    request_of,
    resume_headers,
    stream_path,
)
from dreamforge.domain.events import EventType
from dreamforge.domain.jobs import JobRequest, JobStatus

T = TypeVar("T")


class AsyncClient:
    """Dream Forge over HTTP at ``url`` (default: ``$DREAMFORGE_URL``, else the local
    server), with ``api_key`` (default: ``$DREAMFORGE_API_KEY``); ``http`` may be a client of
    your own (proxies, transports), its base URL set."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._http = http or httpx.AsyncClient(base_url=url or default_url(), timeout=timeout)
        self._http.headers.update(headers_for(api_key or os.environ.get(API_KEY_ENV)))
        self._calls = Calls(self._http)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, call: Call[T]) -> T:
        return call.parse(await self._http.send(call.request))

    async def submit(
        self,
        request: JobRequest | None = None,
        /,
        *,
        idempotency_key: str | None = None,
        **fields: Any,
    ) -> JobOut:
        """Queue a job, given as a ``JobRequest`` or as its fields (``prompt=…``)."""
        return await self._send(self._calls.submit(request_of(request, fields), idempotency_key))

    async def job(self, job_id: str) -> JobOut:
        return await self._send(self._calls.job(job_id))

    async def jobs(
        self, status: JobStatus | None = None, limit: int = 20, cursor: str | None = None
    ) -> JobListOut:
        """A page of jobs, newest first; pass ``next_cursor`` for the next."""
        return await self._send(self._calls.jobs(status, limit, cursor))

    async def cancel(self, job_id: str) -> JobOut:
        return await self._send(self._calls.cancel(job_id))

    async def artifacts(self, job_id: str) -> list[ArtifactOut]:
        return await self._send(self._calls.artifacts(job_id))

    async def download(self, artifact: ArtifactOut) -> bytes:
        return await self._send(self._calls.download(artifact))

    async def logs(self, job_id: str, tail: int | None = None) -> list[Event]:
        return await self._send(self._calls.logs(job_id, tail))

    async def models(self) -> ModelListOut:
        return await self._send(self._calls.models())

    async def events(self, job_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """The job's events until ``done``, after ``last_event_id`` if given. A dropped
        connection is joined again from the last event seen, so none is lost or repeated."""
        last = last_event_id
        failures = 0
        while True:
            try:
                async with aconnect_sse(
                    self._http, "GET", stream_path(job_id), headers=resume_headers(last)
                ) as source:
                    if not source.response.is_success:
                        await source.response.aread()
                        checked(source.response)
                    async for sse in source.aiter_sse():
                        if not sse.data:  # a keep-alive comment
                            continue
                        event = Event.parse(sse.data)
                        failures = 0
                        if event.seq is not None:
                            last = event.seq
                        yield event
                        if event.type is EventType.DONE:
                            return
            except httpx.TransportError:
                failures += 1
                if failures > RECONNECTS:
                    raise
                await asyncio.sleep(RECONNECT_S * 2 ** (failures - 1))

    async def wait(self, job_id: str) -> JobOut:
        """Follow the job to its end; the job as it ended."""
        async for _ in self.events(job_id):
            pass
        return await self.job(job_id)

    async def save(self, job_id: str, directory: str | Path) -> list[Path]:
        """Write the job's images (receipts inside) into ``directory``; their paths."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for artifact in await self.artifacts(job_id):
            path = artifact_path(folder, artifact)
            path.write_bytes(await self.download(artifact))
            paths.append(path)
        return paths
