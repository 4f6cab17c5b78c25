"""Which failures deserve another attempt, and how long to wait before it.

A transient failure is one the same job may not meet again: the object store or the
database hiccuped, the pipeline process died, the worker vanished. A permanent one would
happen again, so it fails the job at once: a bad request, a missing model, a pipeline
error, running out of memory with one image at a time, a job past its time limit. A job
that keeps meeting transient failures is given up after ``max_attempts`` and lands in the
dead-letter queue, where an operator can look at it and send it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from dreamforge.domain.errors import ErrorCode

TRANSIENT_CODES = frozenset(
    {
        ErrorCode.STORAGE_ERROR,
        ErrorCode.RUNNER_CRASHED,
        ErrorCode.WORKER_LOST,
        ErrorCode.UNAVAILABLE,
    }
)


def is_transient(code: ErrorCode) -> bool:
    return code in TRANSIENT_CODES


class Verdict(Enum):
    RETRY = "retry"  # back to the queue, after a delay
    FAIL = "fail"  # permanent: failed now
    DEAD_LETTER = "dead_letter"  # transient, but out of attempts: failed, and in the DLQ


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0

    def verdict(self, code: ErrorCode, attempt: int) -> Verdict:
        """What to do after attempt number ``attempt`` (from 1) failed with ``code``."""
        if not is_transient(code):
            return Verdict.FAIL
        return Verdict.RETRY if attempt < self.max_attempts else Verdict.DEAD_LETTER

    def delay_s(self, attempt: int, jitter: float) -> float:
        """Seconds before the attempt after ``attempt``: doubling from ``backoff_s`` up to
        ``max_backoff_s``, half of it fixed and half drawn (``jitter`` in [0, 1)), so that
        jobs failed by one hiccup do not all come back at the same moment."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1))
        return ceiling * (0.5 + jitter / 2)
