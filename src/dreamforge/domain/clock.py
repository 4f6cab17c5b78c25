"""The one clock: timezone-aware UTC, so no layer ever compares naive and aware times."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
