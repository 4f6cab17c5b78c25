"""Prometheus metrics: what a worker and the API count, and how they are exposed.

Every process records into prometheus-client's metrics. ``dreamforge api --workers N``
runs several processes behind one port, so it sets ``PROMETHEUS_MULTIPROC_DIR`` and each
scrape adds up the files of all of them; elsewhere a process serves its own. Queue depth
is read from the database at scrape time, so any process reports it right.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# From a 10 ms PNG encode to an hour-long batch.
SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)

JOBS_CREATED = Counter("dreamforge_jobs_created", "Jobs accepted by the API.")
JOBS_FINISHED = Counter(
    "dreamforge_jobs_finished",
    "Jobs that ended, by status and error code ('' when none).",
    ["status", "code"],
)
JOBS_RETRIED = Counter(
    "dreamforge_jobs_retried", "Attempts that failed transiently and were retried.", ["code"]
)
STAGE_SECONDS = Histogram(
    "dreamforge_stage_seconds",
    "Time spent per stage: queue_wait (created to claimed), model_load, denoise (a "
    "micro-batch), encode (an image's PNG), upload (an image), job (claimed to ended).",
    ["stage"],
    buckets=SECONDS,
)
ITEMS_RENDERED = Counter("dreamforge_items_rendered", "Images rendered and stored.")
MODEL_LOADS = Counter(
    "dreamforge_model_loads", "Model loads by a runner, from disk or cache.", ["source"]
)
MODEL_EVICTIONS = Counter(
    "dreamforge_model_evictions", "Pipelines unloaded to make room for another model."
)
DEVICE_MEMORY = Gauge(
    "dreamforge_device_memory_bytes",
    "Device memory after the last job: allocated, baseline (the loaded models), total, "
    "and peak (the most it held at once).",
    ["kind"],
    multiprocess_mode="liveall",
)
DOWNLOAD_BYTES = Counter("dreamforge_download_bytes", "Model bytes downloaded.")


class QueueDepth(Collector):
    """Waiting work per queue, counted in the database when scraped."""

    def __init__(self, counts: Callable[[], dict[str, int]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "dreamforge_queue_depth",
            "Work waiting per queue (queued jobs, downloads).",
            labels=["queue"],
        )
        for queue, count in sorted(self._counts().items()):
            family.add_metric([queue], count)
        yield family


def registry(queue_depth: Callable[[], dict[str, int]] | None = None) -> CollectorRegistry:
    """What a scrape of this process reports: all processes' metrics where several share
    a port, and the queue depth when given."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        found = CollectorRegistry()
        multiprocess.MultiProcessCollector(found)  # type: ignore[no-untyped-call]
    else:
        found = CollectorRegistry()
        found.register(_Default())
    if queue_depth is not None:
        found.register(QueueDepth(queue_depth))
    return found


class _Default(Collector):
    """This process's own metrics, as the default registry holds them."""

    def collect(self) -> Iterator[object]:  # type: ignore[override]
        yield from REGISTRY.collect()


def exposition(found: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(found), CONTENT_TYPE_LATEST
