"""Jobs and their event logs.

Every change to a job is one transaction that also appends the events describing it, each
with the next per-job sequence number; the counter lives on the job row and moves with an
atomic ``UPDATE … RETURNING``, so concurrent writers never share or skip a number.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, update
from sqlalchemy.orm import Session

from dreamforge.domain.events import EventType
from dreamforge.domain.jobs import JobSpec, JobStatus
from dreamforge.store.db import Database
from dreamforge.store.records import Artifact, Job, JobEvent
from dreamforge.store.tables import ArtifactRow, EventRow, JobRow, utcnow

NewEvent = tuple[EventType, dict[str, Any]]


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None


def _job(row: JobRow) -> Job:
    return Job(
        id=row.id,
        status=JobStatus(row.status),
        spec=JobSpec.model_validate(row.spec),
        progress=row.progress,
        stage=row.stage,
        error=row.error,
        cancel_requested=row.cancel_requested,
        attempts=row.attempts,
        lease_owner=row.lease_owner,
        last_seq=row.last_seq,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _event(row: EventRow) -> JobEvent:
    return JobEvent(row.job_id, row.seq, EventType(row.type), row.data, row.created_at)


def _artifact(row: ArtifactRow) -> Artifact:
    return Artifact(
        job_id=row.job_id,
        step_index=row.step_index,
        step_type=row.step_type,
        item_index=row.item_index,
        key=row.key,
        content_type=row.content_type,
        size_bytes=row.size_bytes,
        sha256=row.sha256,
        width=row.width,
        height=row.height,
        seed=row.seed,
        created_at=row.created_at,
    )


def _encode_cursor(job: Job) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at.isoformat()}|{job.id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
    return datetime.fromisoformat(created), job_id


class JobRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- writes -------------------------------------------------------------------------

    def create(self, job_id: str, spec: JobSpec, events: Sequence[NewEvent]) -> Job:
        with self._db.transaction() as session:
            row = JobRow(
                id=job_id,
                status=JobStatus.QUEUED,
                spec=spec.model_dump(mode="json"),
                progress=0.0,
                stage="queued",
                cancel_requested=False,
                attempts=0,
                last_seq=0,
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            self._append(session, job_id, events, {})
            session.refresh(row)
            return _job(row)

    def record(self, job_id: str, events: Sequence[NewEvent], **fields: Any) -> list[JobEvent]:
        """Append events and update fields unconditionally."""
        with self._db.transaction() as session:
            return self._append(session, job_id, events, fields) or []

    def transition(
        self,
        job_id: str,
        *,
        from_statuses: Iterable[JobStatus],
        events: Sequence[NewEvent],
        owner: str | None = None,
        **fields: Any,
    ) -> list[JobEvent] | None:
        """Apply ``fields`` only if the job is in one of ``from_statuses`` (and, when given,
        still leased by ``owner``); ``None`` when the condition did not hold."""
        conditions: list[ColumnElement[bool]] = [
            JobRow.status.in_([s.value for s in from_statuses])
        ]
        if owner is not None:
            conditions.append(JobRow.lease_owner == owner)
        with self._db.transaction() as session:
            return self._append(session, job_id, events, fields, and_(*conditions))

    def claim(
        self, job_id: str, owner: str, lease_s: float, events: Sequence[NewEvent]
    ) -> Job | None:
        """``queued → running`` for ``owner``; ``None`` if someone else got there first."""
        now = utcnow()
        with self._db.transaction() as session:
            appended = self._append(
                session,
                job_id,
                events,
                {
                    "status": JobStatus.RUNNING.value,
                    "lease_owner": owner,
                    "lease_expires_at": now + timedelta(seconds=lease_s),
                    "started_at": now,
                    "attempts": JobRow.attempts + 1,
                    "stage": "claimed",
                },
                JobRow.status == JobStatus.QUEUED.value,
            )
            if appended is None:
                return None
            row = session.get(JobRow, job_id)
            assert row is not None
            return _job(row)

    def renew_lease(self, job_id: str, owner: str, lease_s: float) -> bool:
        with self._db.transaction() as session:
            result = session.execute(
                update(JobRow)
                .where(
                    JobRow.id == job_id,
                    JobRow.lease_owner == owner,
                    JobRow.status == JobStatus.RUNNING.value,
                )
                .values(lease_expires_at=utcnow() + timedelta(seconds=lease_s))
                .returning(JobRow.id)
            )
            return result.first() is not None

    def orphaned(self, expired_before: datetime | None) -> list[Job]:
        """Running jobs whose lease ran out before ``expired_before`` (all, when ``None``)."""
        query = select(JobRow).where(JobRow.status == JobStatus.RUNNING.value)
        if expired_before is not None:
            query = query.where(JobRow.lease_expires_at < expired_before)
        with self._db.transaction() as session:
            return [_job(r) for r in session.scalars(query)]

    def queued_ids(self) -> list[str]:
        with self._db.transaction() as session:
            query = (
                select(JobRow.id)
                .where(JobRow.status == JobStatus.QUEUED.value)
                .order_by(JobRow.created_at)
            )
            return list(session.scalars(query))

    def save_artifact(self, artifact: Artifact, events: Sequence[NewEvent]) -> list[JobEvent]:
        """Record an artifact once; a re-run of the same item replaces the row, never adds one."""
        with self._db.transaction() as session:
            existing = session.get(
                ArtifactRow, (artifact.job_id, artifact.step_index, artifact.item_index)
            )
            if existing is not None:
                session.delete(existing)
                session.flush()
            session.add(ArtifactRow(**artifact.__dict__))
            return self._append(session, artifact.job_id, events, {}) or []

    @staticmethod
    def _append(
        session: Session,
        job_id: str,
        events: Sequence[NewEvent],
        fields: dict[str, Any],
        condition: Any = None,
    ) -> list[JobEvent] | None:
        statement = update(JobRow).where(JobRow.id == job_id)
        if condition is not None:
            statement = statement.where(condition)
        last = session.execute(
            statement.values(last_seq=JobRow.last_seq + len(events), **fields).returning(
                JobRow.last_seq
            )
        ).scalar_one_or_none()
        if last is None:
            return None
        now = utcnow()
        rows = [
            EventRow(
                job_id=job_id,
                seq=last - len(events) + i + 1,
                type=type_.value,
                data=data,
                created_at=now,
            )
            for i, (type_, data) in enumerate(events)
        ]
        session.add_all(rows)
        return [_event(r) for r in rows]

    # -- reads --------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self._db.transaction() as session:
            row = session.get(JobRow, job_id)
            return _job(row) if row else None

    def is_cancel_requested(self, job_id: str) -> bool:
        with self._db.transaction() as session:
            return bool(session.scalar(select(JobRow.cancel_requested).where(JobRow.id == job_id)))

    def page(self, status: JobStatus | None, limit: int, cursor: str | None) -> JobPage:
        """Newest first; ``cursor`` continues after the last job of the previous page."""
        query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id.desc())
        if status is not None:
            query = query.where(JobRow.status == status.value)
        if cursor:
            created, job_id = _decode_cursor(cursor)
            query = query.where(
                or_(
                    JobRow.created_at < created,
                    and_(JobRow.created_at == created, JobRow.id < job_id),
                )
            )
        with self._db.transaction() as session:
            jobs = [_job(r) for r in session.scalars(query.limit(limit + 1))]
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs, _encode_cursor(jobs[-1]) if more else None)

    def events(
        self,
        job_id: str,
        after_seq: int = 0,
        types: Iterable[EventType] | None = None,
        since: datetime | None = None,
    ) -> list[JobEvent]:
        query = (
            select(EventRow)
            .where(EventRow.job_id == job_id, EventRow.seq > after_seq)
            .order_by(EventRow.seq)
        )
        if types is not None:
            query = query.where(EventRow.type.in_([t.value for t in types]))
        if since is not None:
            query = query.where(EventRow.created_at > since)
        with self._db.transaction() as session:
            return [_event(r) for r in session.scalars(query)]

    def artifacts(self, job_id: str) -> list[Artifact]:
        query = (
            select(ArtifactRow)
            .where(ArtifactRow.job_id == job_id)
            .order_by(ArtifactRow.step_index, ArtifactRow.item_index)
        )
        with self._db.transaction() as session:
            return [_artifact(r) for r in session.scalars(query)]

    def artifact_by_key(self, key: str) -> Artifact | None:
        with self._db.transaction() as session:
            row = session.scalar(select(ArtifactRow).where(ArtifactRow.key == key))
            return _artifact(row) if row else None
