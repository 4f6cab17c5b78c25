"""Dramatiq brokers: in-memory for the embedded profile, Redis for the distributed one.

Both run the same actors; only the transport differs. The broker carries job ids only:
the database is the source of truth.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.stub import StubBroker

GPU_QUEUE = "gpu"
IO_QUEUE = "io"
REMOTE_QUEUE = "remote"  # jobs of models a hosted image API renders
QUEUES = (GPU_QUEUE, IO_QUEUE, REMOTE_QUEUE)


def make_broker(url: str, namespace: str) -> dramatiq.Broker:
    if url.startswith("memory://"):
        broker: dramatiq.Broker = StubBroker()
        broker.emit_after("process_boot")
        return broker
    if url.startswith(("redis://", "rediss://")):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, namespace=namespace, socket_timeout=5, socket_connect_timeout=5)
    raise ValueError(f"unsupported broker URL {url!r}: use memory:// or redis://…")


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
