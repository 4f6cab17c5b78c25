"""Retention: finished jobs older than their tenant's policy go, images first.

Objects are deleted from storage before the rows that list them, never the reverse: a
sweep cut short leaves rows whose images are partly gone (the next sweep finishes them),
never an image no row knows of.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog

from dreamforge.artifacts.storage import ArtifactStorage
from dreamforge.domain.clock import utcnow
from dreamforge.store.jobs import JobRepository

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Swept:
    jobs: int = 0
    images: int = 0
    failed: int = 0  # jobs kept because an image could not be deleted; tried next time


class Retention:
    def __init__(
        self,
        jobs: JobRepository,
        storage: ArtifactStorage,
        default_days: float,
        tenant_days: Mapping[str, float],
        batch: int = 500,
    ) -> None:
        self._jobs = jobs
        self._storage = storage
        self._default_days = default_days
        self._tenant_days = dict(tenant_days)
        self._batch = batch

    @property
    def keeps_everything(self) -> bool:
        return self._default_days <= 0 and all(d <= 0 for d in self._tenant_days.values())

    def sweep(self, now: datetime | None = None) -> Swept:
        """Delete what expired by ``now``; what was deleted and what failed."""
        now = now or utcnow()
        swept = Swept()
        policies: list[tuple[str | None, float]] = [*self._tenant_days.items()]
        policies.append((None, self._default_days))
        for tenant, days in policies:
            if days <= 0:
                continue  # kept for good
            skip = list(self._tenant_days) if tenant is None else []
            cutoff = now - timedelta(days=days)
            for job in self._jobs.expired(cutoff, self._batch, tenant, skip):
                swept = self._delete(job.id, swept)
        if swept.jobs or swept.failed:
            log.info("retention.swept", jobs=swept.jobs, images=swept.images, failed=swept.failed)
        return swept

    def _delete(self, job_id: str, swept: Swept) -> Swept:
        keys = [artifact.key for artifact in self._jobs.artifacts(job_id)]
        try:
            for key in keys:
                self._storage.delete(key)
        except Exception:  # storage is down: keep the rows, so that nothing is orphaned
            log.warning("retention.delete_failed", job_id=job_id, exc_info=True)
            return Swept(swept.jobs, swept.images, swept.failed + 1)
        self._jobs.delete(job_id)
        return Swept(swept.jobs + 1, swept.images + len(keys), swept.failed)
