"""Plain, immutable snapshots of what Dream Forge keeps: jobs, artifacts and models.

The store maps them to tables; every other layer reads them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from dreamforge.domain.access import DEFAULT_TENANT
from dreamforge.domain.errors import JobError
from dreamforge.domain.jobs import JobSpec, JobStatus, ModelDefaults


@dataclass(frozen=True)
class Job:
    id: str
    status: JobStatus
    spec: JobSpec
    progress: float
    stage: str
    error: JobError | None
    cancel_requested: bool
    attempts: int
    lease_owner: str | None
    last_seq: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # Set when the job failed for good after its transient failures used up its attempts.
    dead_lettered_at: datetime | None = None
    tenant: str = DEFAULT_TENANT
    webhook_url: str | None = None  # not in the spec: receipts must not carry it


@dataclass(frozen=True)
class IdempotencyKey:
    """A client's ``Idempotency-Key`` and the fingerprint of the request it came with."""

    key: str
    request_sha256: str


@dataclass(frozen=True)
class Artifact:
    job_id: str
    step_index: int
    step_type: str
    item_index: int
    key: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int
    height: int
    seed: int
    created_at: datetime


@dataclass(frozen=True)
class ModelFile:
    path: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class Model:
    id: str
    source: str
    path: str
    format: str
    base: str
    sha256: str
    size_bytes: int
    files: list[ModelFile]
    defaults: ModelDefaults
    status: str
    created_at: datetime
    revision: str | None = None
    # Where it came from: the source's address, when it was fetched, the source's own data.
    provenance: dict[str, Any] = field(default_factory=dict)


class DownloadStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (DownloadStatus.SUCCEEDED, DownloadStatus.FAILED)


@dataclass(frozen=True)
class Download:
    """A model being fetched in the background (the io queue) into the registry."""

    id: str
    source: str
    model_id: str | None  # asked for, or known once registered
    status: DownloadStatus
    bytes_done: int
    bytes_total: int | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    tenant: str = DEFAULT_TENANT
