"""What a job tells its followers: the event types and the payload of each.

Each payload is a pydantic model, so the SSE ``data:`` objects and the NDJSON log lines
are documented in OpenAPI and checked where they are made. On the wire an event is its
payload plus ``seq``, ``type`` and ``ts``.

Durable events (status, stage, log, artifact, done) are stored with a gapless per-job
``seq``; denoising progress is live only: it carries no ``seq`` and is never replayed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from dreamforge.domain.errors import JobError
from dreamforge.domain.jobs import JobStatus
from dreamforge.domain.records import Artifact


class EventType(StrEnum):
    STATUS = "status"
    STAGE = "stage"
    PROGRESS = "progress"
    LOG = "log"
    ARTIFACT = "artifact"
    DONE = "done"  # the terminal event: the stream closes after it


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class EventData(BaseModel):
    """The payload of one event; ``TYPE`` says which."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    TYPE: ClassVar[EventType]

    def dump(self) -> dict[str, Any]:
        # Optional fields nobody set stay off the wire; an explicit None (done's error) stays.
        return self.model_dump(mode="json", exclude_unset=True)


class StatusData(EventData):
    """The job moved to another status."""

    TYPE = EventType.STATUS
    status: JobStatus
    worker: str | None = Field(None, description="The worker that claimed it (running only).")


class StageData(EventData):
    """The job entered a stage of its run."""

    TYPE = EventType.STAGE
    stage: str
    progress: float = Field(ge=0, le=1)
    step_index: int | None = Field(None, description="The step of the chain it is in.")


class ProgressData(EventData):
    """Denoising progress: sent live after a step (at most every ``progress_interval_s``),
    never stored, never replayed.

    A stream also sends one (without ``step``) right after its replay, with the job's
    current progress, so a client that reconnects sees where the job is at once.
    """

    TYPE = EventType.PROGRESS
    progress: float = Field(ge=0, le=1)
    stage: str
    step_index: int | None = None
    item_index: int | None = Field(None, description="The first item of the micro-batch.")
    items: tuple[int, ...] | None = Field(None, description="The items denoising together.")
    step: int | None = None
    steps: int | None = None


class LogData(EventData):
    TYPE = EventType.LOG
    level: LogLevel
    message: str
    stage: str | None = None
    attempt: int | None = None
    code: str | None = Field(None, description="The error code, on error lines.")
    step_index: int | None = Field(None, description="The step of the chain it is about.")


class ArtifactData(EventData):
    """An image was stored; the same fields as in the artifact listing, without the URL."""

    TYPE = EventType.ARTIFACT
    key: str
    content_type: str
    size_bytes: int
    sha256: str
    width: int
    height: int
    seed: int
    step_index: int
    step_type: str
    item_index: int

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactData:
        fields = dataclasses.asdict(artifact)
        return cls(**{name: fields[name] for name in cls.model_fields})


class DoneData(EventData):
    """The terminal event: the job ended; the stream closes after it."""

    TYPE = EventType.DONE
    status: JobStatus
    error: JobError | None


PAYLOADS: dict[EventType, type[EventData]] = {
    cls.TYPE: cls for cls in (StatusData, StageData, ProgressData, LogData, ArtifactData, DoneData)
}


@dataclass(frozen=True)
class JobEvent:
    """One event as followers see it. ``seq`` is ``None`` for live-only progress."""

    job_id: str
    seq: int | None
    type: EventType
    data: dict[str, Any]
    created_at: datetime

    @classmethod
    def live(cls, job_id: str, data: EventData, at: datetime) -> JobEvent:
        return cls(job_id, None, data.TYPE, data.dump(), at)


def log_event(
    message: str,
    level: LogLevel = LogLevel.INFO,
    stage: str | None = None,
    *,
    attempt: int | None = None,
    code: str | None = None,
    step_index: int | None = None,
) -> LogData:
    given = (("attempt", attempt), ("code", code), ("step_index", step_index))
    extra = {k: v for k, v in given if v is not None}
    return LogData(level=level, message=message, stage=stage, **extra)


def status_event(to: JobStatus, worker: str | None = None) -> StatusData:
    return StatusData(status=to) if worker is None else StatusData(status=to, worker=worker)


def failure_events(
    error: JobError, stage: str, attempts: int, dead_lettered: bool
) -> list[EventData]:
    """What a job that failed for good says: the error, the dead-letter queue if it went
    there, its status and the terminal ``done``."""
    said: list[EventData] = [log_event(error.message, LogLevel.ERROR, stage, code=error.code)]
    if dead_lettered:
        said.append(
            log_event(
                f"gave up after {attempts} attempt(s); the job is in the dead-letter queue",
                LogLevel.ERROR,
                stage,
                code=error.code,
            )
        )
    return [*said, status_event(JobStatus.FAILED), DoneData(status=JobStatus.FAILED, error=error)]
