"""The task entry points: one Dramatiq actor for each kind of work, on its queue.

Every process declares the actors, since senders need them too; a process does the work
only once a worker has attached its handler. The broker carries ids only: the database is
the source of truth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq

from dreamforge.domain.records import Model
from dreamforge.models.registry import REMOTE_FORMAT
from dreamforge.queue.broker import GPU_QUEUE, IO_QUEUE, REMOTE_QUEUE

JobHandler = Callable[[str], Any]


def queue_for(model: Model | None) -> str:
    """A hosted model's jobs go to the remote queue, every other to the gpu one."""
    return REMOTE_QUEUE if model is not None and model.format == REMOTE_FORMAT else GPU_QUEUE


class NotAWorker(RuntimeError):
    """A task reached a process that runs no worker for its queue."""


class Tasks:
    """``run_job`` on the gpu queue, ``download_model`` on the io queue."""

    def __init__(
        self,
        broker: dramatiq.Broker,
        job_time_limit_s: float,
        webhook_attempts: int = 5,
        queue_of: Callable[[str], str] = lambda _: GPU_QUEUE,
    ) -> None:
        self.broker = broker
        self._queue_of = queue_of  # which queue a job goes to: by its model
        self._run_job: JobHandler | None = None
        self._run_remote_job: JobHandler | None = None
        self._download_model: JobHandler | None = None
        self._deliver_webhook: JobHandler | None = None
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
        # The same, for models a hosted API renders: their own workers, no GPU needed.
        self.run_remote_job: dramatiq.Actor[[str], None] = dramatiq.actor(
            self._dispatch_run_remote_job,
            broker=broker,
            actor_name="run_remote_job",
            queue_name=REMOTE_QUEUE,
            max_retries=0,
            time_limit=int((job_time_limit_s + 60) * 1000),
        )
        # A download may take an hour: no time limit but the one its size cap implies.
        self.download_model: dramatiq.Actor[[str], None] = dramatiq.actor(
            self._dispatch_download_model,
            broker=broker,
            actor_name="download_model",
            queue_name=IO_QUEUE,
            max_retries=0,
            time_limit=7 * 24 * 3600 * 1000,
        )

        # A webhook is the one task Dramatiq retries itself: nothing else records its
        # attempts, and a receiver that is down for a minute must still hear of the job.
        self.deliver_webhook: dramatiq.Actor[[str], None] = dramatiq.actor(
            self._dispatch_deliver_webhook,
            broker=broker,
            actor_name="deliver_webhook",
            queue_name=IO_QUEUE,
            max_retries=webhook_attempts - 1,
            min_backoff=1_000,
            max_backoff=300_000,
            time_limit=60_000,
        )

    def attach(
        self,
        run_job: JobHandler | None = None,
        download_model: JobHandler | None = None,
        deliver_webhook: JobHandler | None = None,
        run_remote_job: JobHandler | None = None,
    ) -> None:
        """Do the gpu queue's work (``run_job``), the remote queue's (``run_remote_job``)
        or the io queue's (``download_model``, ``deliver_webhook``) in this process."""
        self._run_job = run_job or self._run_job
        self._run_remote_job = run_remote_job or self._run_remote_job
        self._download_model = download_model or self._download_model
        self._deliver_webhook = deliver_webhook or self._deliver_webhook

    def enqueue_job(self, job_id: str, delay_s: float = 0.0, queue: str | None = None) -> None:
        """Send the job to its queue (gpu, or remote for a hosted model's), to be taken
        at once or after ``delay_s``. A caller that knows the queue says so (at submit, the
        model is at hand); otherwise the job and its model are read to find it."""
        queue = queue or self._queue_of(job_id)
        actor = self.run_remote_job if queue == REMOTE_QUEUE else self.run_job
        if delay_s > 0:
            actor.send_with_options(args=(job_id,), delay=int(delay_s * 1000))
        else:
            actor.send(job_id)

    def pending_job_ids(self) -> set[str] | None:
        """The jobs the broker holds messages for (waiting, delayed or being worked on);
        ``None`` where it cannot lose any: the in-memory broker, while its process lives
        (a restart re-sends every queued job)."""
        client = getattr(self.broker, "client", None)
        if client is None:
            return None
        held: set[str] = set()
        for queue in (GPU_QUEUE, REMOTE_QUEUE):
            for suffix in (".msgs", ".DQ.msgs"):  # Redis keeps a body until it is acked
                for body in client.hvals(f"{self.broker.namespace}:{queue}{suffix}"):
                    held.add(str(dramatiq.Message.decode(body).args[0]))
        return held

    def enqueue_download(self, download_id: str) -> None:
        self.download_model.send(download_id)

    def enqueue_webhook(self, job_id: str) -> None:
        self.deliver_webhook.send(job_id)

    def _dispatch_run_job(self, job_id: str) -> None:
        _handle(self._run_job, job_id, "this process runs no jobs")

    def _dispatch_run_remote_job(self, job_id: str) -> None:
        _handle(self._run_remote_job, job_id, "this process runs no remote jobs")

    def _dispatch_download_model(self, download_id: str) -> None:
        _handle(self._download_model, download_id, "this process runs no downloads")

    def _dispatch_deliver_webhook(self, job_id: str) -> None:
        _handle(self._deliver_webhook, job_id, "this process sends no webhooks")


def _handle(handler: JobHandler | None, task_id: str, refusal: str) -> None:
    """Hand the task to this process's handler; ``NotAWorker`` if it attached none."""
    if handler is None:
        raise NotAWorker(refusal)
    handler(task_id)
