"""A job run to its end within one request, for the doors that answer with the images
themselves (the OpenAI and AUTOMATIC1111 compatible routes). The job is an ordinary one:
queued, rendered by a worker, listed, with receipts; only the caller waits for it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from dreamforge.domain.errors import Conflict, DreamForgeError
from dreamforge.domain.jobs import JobRequest, JobStatus
from dreamforge.domain.records import Job
from dreamforge.events.follow import JobEvents
from dreamforge.services.artifacts import ArtifactLink, ArtifactService
from dreamforge.services.jobs import JobService


class JobFailed(DreamForgeError):
    """The job ended failed: its own code and message, as a 500."""

    def __init__(self, job: Job) -> None:
        assert job.error is not None
        super().__init__(job.error.code, f"job {job.id} failed: {job.error.message}")


@dataclass(frozen=True)
class Image:
    link: ArtifactLink
    content: bytes


@dataclass(frozen=True)
class Finished:
    job: Job
    images: list[Image]  # in item order


class JobCompletion:
    def __init__(self, jobs: JobService, events: JobEvents, artifacts: ArtifactService) -> None:
        self._jobs = jobs
        self._events = events
        self._artifacts = artifacts

    async def run(self, request: JobRequest, tenant: str, base_url: str) -> Finished:
        """Submit ``request``, wait for its job to end, and read its images; a job that
        fails raises ``JobFailed``, one canceled meanwhile ``Conflict``."""
        job = await asyncio.to_thread(self._jobs.submit, request, None, tenant)
        async for _ in self._events.follow(job.id, 0):
            pass
        job = await asyncio.to_thread(self._jobs.get, job.id, tenant)
        if job.status is JobStatus.CANCELED:
            raise Conflict(f"job {job.id} was canceled before it finished")
        if job.status is not JobStatus.SUCCEEDED:
            raise JobFailed(job)
        images = await asyncio.to_thread(self._read, job, base_url)
        return Finished(job, images)

    def _read(self, job: Job, base_url: str) -> list[Image]:
        links = self._artifacts.list(job.id, job.tenant, base_url)
        return [Image(link, self._artifacts.content(link.artifact)) for link in links]
