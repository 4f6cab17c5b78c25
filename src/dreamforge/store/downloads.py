"""Background downloads: one row each, moved on by conditional updates like jobs."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Row, Table, func, insert, select, update

from dreamforge.domain.access import DEFAULT_TENANT
from dreamforge.domain.clock import utcnow
from dreamforge.domain.records import Download, DownloadStatus
from dreamforge.store.db import Database
from dreamforge.store.tables import DownloadRow

downloads = cast(Table, DownloadRow.__table__)


def _download(row: Row[Any]) -> Download:
    m = row._mapping
    return Download(**{**m, "status": DownloadStatus(m["status"])})


class DownloadRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(
        self, download_id: str, source: str, model_id: str | None, tenant: str = DEFAULT_TENANT
    ) -> Download:
        values = {
            "id": download_id,
            "tenant": tenant,
            "source": source,
            "model_id": model_id,
            "status": DownloadStatus.QUEUED.value,
            "bytes_done": 0,
            "created_at": utcnow(),
        }
        with self._db.connection() as connection:
            connection.execute(insert(downloads).values(**values))
        found = self.get(download_id)
        assert found is not None
        return found

    def claim(self, download_id: str) -> Download | None:
        """``queued → running``; ``None`` if it was not queued (a duplicate delivery)."""
        return self._move(
            download_id,
            DownloadStatus.QUEUED,
            status=DownloadStatus.RUNNING.value,
            started_at=utcnow(),
        )

    def progress(self, download_id: str, done: int, total: int | None) -> None:
        with self._db.connection() as connection:
            connection.execute(
                update(downloads)
                .where(downloads.c.id == download_id)
                .values(bytes_done=done, bytes_total=total)
            )

    def finish(
        self, download_id: str, status: DownloadStatus, model_id: str | None, error: str | None
    ) -> Download | None:
        return self._move(
            download_id,
            DownloadStatus.RUNNING,
            status=status.value,
            model_id=model_id,
            error=error,
            finished_at=utcnow(),
        )

    def _move(self, download_id: str, source: DownloadStatus, **values: Any) -> Download | None:
        with self._db.connection() as connection:
            row = connection.execute(
                update(downloads)
                .where(downloads.c.id == download_id, downloads.c.status == source.value)
                .values(**values)
                .returning(*downloads.c)
            ).first()
            return _download(row) if row else None

    def get(self, download_id: str) -> Download | None:
        with self._db.reading() as connection:
            row = connection.execute(select(downloads).where(downloads.c.id == download_id)).first()
            return _download(row) if row else None

    def recent(self, tenant: str, limit: int) -> list[Download]:
        """The tenant's downloads, newest first."""
        query = (
            select(downloads)
            .where(downloads.c.tenant == tenant)
            .order_by(downloads.c.created_at.desc(), downloads.c.id)
            .limit(limit)
        )
        with self._db.reading() as connection:
            return [_download(row) for row in connection.execute(query)]

    def count_queued(self) -> int:
        query = select(func.count()).select_from(downloads).where(downloads.c.status == "queued")
        with self._db.reading() as connection:
            return int(connection.execute(query).scalar_one())
