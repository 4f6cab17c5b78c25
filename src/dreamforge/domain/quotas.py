"""How much a tenant may ask of the service: jobs waiting at once and images a day
(checked when a job is created), and jobs running at once (checked when a worker claims
one: the job waits in the queue until one of the tenant's others ends). 0 means no limit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from dreamforge.domain.errors import DreamForgeError, ErrorCode, FieldProblem


@dataclass(frozen=True)
class Quota:
    queued_jobs: int = 0  # waiting at once
    running_jobs: int = 0  # rendering at once
    images_per_day: int = 0  # asked for since 00:00 UTC

    @property
    def checked_at_create(self) -> bool:
        return bool(self.queued_jobs or self.images_per_day)


@dataclass(frozen=True)
class Usage:
    queued_jobs: int
    images_today: int


def day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


class QuotaExceeded(DreamForgeError):
    """429: the tenant asked for more than its quota; the headers say how much is left
    and when to try again (RateLimit-* as the IETF httpapi draft names them)."""

    def __init__(self, problem: FieldProblem, limit: int, remaining: int, reset_s: int) -> None:
        headers = {
            "Retry-After": str(reset_s),
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(reset_s),
        }
        super().__init__(ErrorCode.QUOTA_EXCEEDED, problem.message, [problem], headers)


# A queued job starts in seconds to minutes: try again soon.
QUEUED_RETRY_S = 10


def check_quota(quota: Quota, usage: Usage, count: int, now: datetime) -> None:
    """Raise ``QuotaExceeded`` if a job of ``count`` images would go over ``quota``."""
    if quota.queued_jobs and usage.queued_jobs >= quota.queued_jobs:
        raise QuotaExceeded(
            FieldProblem(
                "body",
                f"{usage.queued_jobs} of your jobs are waiting in the queue, the most "
                f"allowed at once ({quota.queued_jobs})",
                "wait for one to start (or cancel one), then send it again",
            ),
            quota.queued_jobs,
            0,
            QUEUED_RETRY_S,
        )
    if quota.images_per_day and usage.images_today + count > quota.images_per_day:
        left = max(0, quota.images_per_day - usage.images_today)
        reset_s = int((day_start(now) + timedelta(days=1) - now).total_seconds()) + 1
        raise QuotaExceeded(
            FieldProblem(
                "count",
                f"{count} image(s) would exceed your {quota.images_per_day} a day; "
                f"{left} left today",
                f"ask for at most {left}, or wait until 00:00 UTC"
                if left
                else "wait until 00:00 UTC",
            ),
            quota.images_per_day,
            left,
            reset_s,
        )
