"""Dramatiq brokers: in-memory for the embedded profile, Redis for the distributed one.

Both run the same actors; only the transport differs. The broker carries job ids only:
the database is the source of truth.
"""

from __future__ import annotations

import logging

import dramatiq
from dramatiq.brokers.stub import StubBroker

GPU_QUEUE = "gpu"
IO_QUEUE = "io"
REMOTE_QUEUE = "remote"  # jobs of models a hosted image API renders
QUEUES = (GPU_QUEUE, IO_QUEUE, REMOTE_QUEUE)


class _SecondWorkerIsNoMistake(logging.Filter):
    """A process consumes the gpu queue (one thread) and the io queue (several) with a
    worker each; each worker adds its own middleware to the one broker, and dramatiq
    warns of the second as if it were a mistake ("may have unexpected results")."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("of the same type twice" in message and "_WorkerMiddleware" in message)


def make_broker(url: str, namespace: str) -> dramatiq.Broker:
    broker: dramatiq.Broker
    if url.startswith("memory://"):
        broker = StubBroker()
        broker.emit_after("process_boot")
    elif url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        broker = RedisBroker(
            url=url, namespace=namespace, socket_timeout=5, socket_connect_timeout=5
        )
    else:
        raise ValueError(f"unsupported broker URL {url!r}: use memory:// or redis://…")
    broker.logger.addFilter(_SecondWorkerIsNoMistake())
    return broker


def ping(broker: dramatiq.Broker) -> None:
    """Raise if the broker cannot be reached (the in-memory one always can)."""
    client = getattr(broker, "client", None)
    if client is not None:
        client.ping()


def consumer(broker: dramatiq.Broker, queues: set[str], threads: int = 1) -> dramatiq.Worker:
    worker = dramatiq.Worker(broker, queues=queues, worker_threads=threads, worker_timeout=500)
    # A GPU worker holds one job, not a backlog another worker could have started.
    worker.queue_prefetch = threads
    return worker
