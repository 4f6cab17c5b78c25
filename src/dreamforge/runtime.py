"""Wiring: builds every adapter from the settings, and starts and stops the worker.

The same code serves both profiles; the URLs in the settings pick the adapters:
SQLite or PostgreSQL, an in-memory or Redis broker (and notifier), local files or S3.
"""

from __future__ import annotations

import fcntl
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import dramatiq
import structlog

from dreamforge.artifacts.signing import UrlSigner
from dreamforge.artifacts.storage import ArtifactStorage, open_storage
from dreamforge.config import Settings
from dreamforge.domain.jobs import Limits
from dreamforge.events.log import EventLog
from dreamforge.events.notifier import InProcessNotifier, Notifier
from dreamforge.jobs import JobService
from dreamforge.models.registry import ModelRegistry, create_tiny_model
from dreamforge.queue.broker import GPU_QUEUE, DramatiqQueue, make_broker
from dreamforge.queue.reaper import Reaper, ReaperLoop
from dreamforge.runners.host import RunnerHost
from dreamforge.runners.protocol import ModelRef
from dreamforge.store.db import Database
from dreamforge.store.jobs import JobRepository
from dreamforge.store.models import ModelRepository
from dreamforge.worker.executor import ExecutorSettings, JobExecutor

log = structlog.get_logger(__name__)


class DataDirInUse(RuntimeError):
    pass


def make_notifier(settings: Settings, serves_streams: bool) -> Notifier:
    if settings.broker_url.startswith("memory://"):
        return InProcessNotifier()
    from dreamforge.events.redis_notifier import RedisNotifier

    return RedisNotifier(settings.broker_url, settings.redis_namespace, serves_streams)


@dataclass
class _Worker:
    """What a process that runs jobs holds on to."""

    runner: RunnerHost
    executor: JobExecutor
    consumer: dramatiq.Worker
    reaper: ReaperLoop


@dataclass
class Runtime:
    settings: Settings
    db: Database
    jobs: JobRepository
    models: ModelRegistry
    notifier: Notifier
    events: EventLog
    signer: UrlSigner
    storage: ArtifactStorage
    queue: DramatiqQueue
    service: JobService
    reaper: Reaper
    worker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )
    _worker: _Worker | None = None
    _lock: IO[Any] | None = None

    @classmethod
    def build(cls, settings: Settings, serves_streams: bool = True) -> Runtime:
        """``serves_streams=False`` for worker-only processes, which follow no events."""
        db = Database(settings.resolved_database_url)
        jobs = JobRepository(db)
        notifier = make_notifier(settings, serves_streams)
        events = EventLog(jobs, notifier)
        models = ModelRegistry(ModelRepository(db))
        signer = UrlSigner(settings.resolved_signing_key)
        # Every process declares the actor (senders need it too); it runs jobs only where
        # start_worker() set the executor.
        runtime: Runtime | None = None

        def run_job(job_id: str) -> None:
            assert runtime is not None and runtime._worker is not None, "not a worker process"
            runtime._worker.executor.run(job_id)

        queue = DramatiqQueue(
            make_broker(settings.broker_url, settings.redis_namespace),
            run_job,
            settings.job_time_limit_s,
        )
        limits = Limits(
            max_width=settings.max_width,
            max_height=settings.max_height,
            max_steps=settings.max_steps,
        )
        runtime = cls(
            settings=settings,
            db=db,
            jobs=jobs,
            models=models,
            notifier=notifier,
            events=events,
            signer=signer,
            storage=open_storage(settings, signer),
            queue=queue,
            service=JobService(
                jobs, events, models, queue.enqueue, limits, settings.default_model_id
            ),
            reaper=Reaper(jobs, events, queue.enqueue),
        )
        return runtime

    def prepare(self) -> None:
        """Migrate the schema and make sure the default model exists."""
        self.db.upgrade()
        if self.models.get(self.settings.default_model_id) is None:
            log.info("model.creating_default", model_id=self.settings.default_model_id)
            create_tiny_model(self.models, self.settings.models_dir, self.settings.default_model_id)

    def start_embedded_worker(self) -> None:
        """The embedded profile: this process alone owns the data dir, so every job that
        was running when it last stopped is an orphan, and goes back to the queue."""
        self._lock_data_dir()
        self.reaper.requeue_orphans(expired_before=None)
        self.start_worker({GPU_QUEUE})
        recovered = self.reaper.send_queued()
        log.info("worker.recovered", jobs=recovered)

    def start_worker(self, queues: set[str]) -> None:
        """Consume ``queues`` in this process: one job at a time, in a runner child."""
        runner = RunnerHost()
        default = self.models.get(self.settings.default_model_id)
        if default is not None and GPU_QUEUE in queues:
            runner.preload(ModelRef.of(default))
        settings = ExecutorSettings(
            worker_id=self.worker_id,
            lease_s=self.settings.lease_s,
            heartbeat_s=self.settings.heartbeat_s,
            time_limit_s=self.settings.job_time_limit_s,
        )
        executor = JobExecutor(
            self.jobs, self.events, self.notifier, self.models, self.storage, runner, settings
        )
        consumer = self.queue.worker(queues)
        reaper = ReaperLoop(
            self.reaper, self.settings.reaper_interval_s, self.settings.requeue_after_s
        )
        self._worker = _Worker(runner, executor, consumer, reaper)
        consumer.start()
        reaper.start()
        log.info("worker.started", worker_id=self.worker_id, queues=sorted(queues))

    def readiness_probes(self) -> dict[str, Callable[[], None]]:
        return {
            "database": self.db.ping,
            "queue": self._check_queue,
            "storage": self.storage.check,
        }

    def _check_queue(self) -> None:
        if self._worker is not None and not all(
            t.is_alive() for t in self._worker.consumer.workers
        ):
            raise RuntimeError("the worker thread has stopped")
        self.queue.ping()

    def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.executor.stop()  # a job in hand goes back to the queue
            worker.reaper.stop()
            worker.consumer.stop(timeout=30_000)
            worker.runner.stop()
        close = getattr(self.notifier, "close", None)
        if close is not None:
            close()
        self.queue.broker.close()
        self.db.dispose()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _lock_data_dir(self) -> None:
        path = Path(self.settings.data_dir) / "dreamforge.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise DataDirInUse(f"another Dream Forge process is using {path.parent}") from exc
        self._lock = handle
