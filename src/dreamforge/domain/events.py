"""The kinds of event a job emits, in the order a client sees them."""

from __future__ import annotations

from enum import StrEnum


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
