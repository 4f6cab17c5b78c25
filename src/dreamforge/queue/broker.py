"""Dramatiq brokers: in-memory for the embedded profile, Redis for the distributed one.

Both run the same actors; only the transport differs. The broker carries job ids only:
the database is the source of truth.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.brokers.stub import StubBroker

GPU_QUEUE = "gpu"
IO_QUEUE = "io"
QUEUES = (GPU_QUEUE, IO_QUEUE)


def make_broker(url: str, namespace: str) -> dramatiq.Broker:
    if url.startswith("memory://"):
        broker: dramatiq.Broker = StubBroker()
        broker.emit_after("process_boot")
        return broker
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, namespace=namespace, socket_timeout=5, socket_connect_timeout=5)
    raise ValueError(f"unsupported broker URL {url!r}: use memory:// or redis://…")


class DramatiqQueue:
    """The job queue over one Dramatiq actor, ``run_job``, on the GPU queue."""

    def __init__(
        self, broker: dramatiq.Broker, run_job: Callable[[str], Any], time_limit_s: int
    ) -> None:
        self.broker = broker
        # Retries stay off here: the executor ends every job itself, and the reaper
        # re-sends jobs whose worker vanished or whose message the broker lost.
        self.actor: dramatiq.Actor[[str], Any] = dramatiq.actor(
            run_job,
            broker=broker,
            actor_name="run_job",
            queue_name=GPU_QUEUE,
            max_retries=0,
            time_limit=(time_limit_s + 60) * 1000,
        )

    def enqueue(self, job_id: str) -> None:
        self.actor.send(job_id)

    def ping(self) -> None:
        client = getattr(self.broker, "client", None)
        if client is not None:
            client.ping()

    def worker(self, queues: set[str], threads: int = 1) -> dramatiq.Worker:
        worker = dramatiq.Worker(
            self.broker, queues=queues, worker_threads=threads, worker_timeout=500
        )
        # A GPU worker holds one job, not a backlog another worker could have started.
        worker.queue_prefetch = threads
        return worker
