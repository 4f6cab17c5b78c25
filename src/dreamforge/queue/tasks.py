"""The task entry points: one Dramatiq actor for each kind of work, on its queue.

Every process declares the actors, since senders need them too; a process does the work
only once a worker has attached its handler. The broker carries ids only: the database is
the source of truth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq

from dreamforge.queue.broker import GPU_QUEUE, IO_QUEUE

JobHandler = Callable[[str], Any]


class NotAWorker(RuntimeError):
    """A task reached a process that runs no worker for its queue."""


class Tasks:
    """``run_job`` on the gpu queue; the io queue is declared, for the downloads to come."""

    def __init__(self, broker: dramatiq.Broker, job_time_limit_s: float) -> None:
        self.broker = broker
        self._run_job: JobHandler | None = None
        # Retries stay off: the worker ends every job itself, and the reaper re-sends jobs
        # whose worker vanished or whose message the broker lost.
        self.run_job: dramatiq.Actor[[str], None] = dramatiq.actor(
            self._dispatch_run_job,
            broker=broker,
            actor_name="run_job",
            queue_name=GPU_QUEUE,
            max_retries=0,
            # Dramatiq's own limit is a last resort; the worker enforces the job's.
            time_limit=int((job_time_limit_s + 60) * 1000),
        )
        broker.declare_queue(IO_QUEUE)

    def attach(self, run_job: JobHandler) -> None:
        """Do the gpu queue's work in this process with ``run_job``."""
        self._run_job = run_job

    def enqueue_job(self, job_id: str) -> None:
        self.run_job.send(job_id)

    def _dispatch_run_job(self, job_id: str) -> None:
        if self._run_job is None:
            raise NotAWorker("this process runs no jobs")
        self._run_job(job_id)
