"""Wiring: builds every adapter from the settings, and starts and stops the worker."""

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
from dreamforge.queue.reaper import Reaper
from dreamforge.runners.host import RunnerHost
from dreamforge.runners.protocol import ModelRef
from dreamforge.store.db import Database
from dreamforge.store.jobs import JobRepository
from dreamforge.store.models import ModelRepository
from dreamforge.worker.executor import ExecutorSettings, JobExecutor

log = structlog.get_logger(__name__)


class DataDirInUse(RuntimeError):
    pass


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
    _runner: RunnerHost | None = None
    _executor: list[JobExecutor] = field(default_factory=list)
    _worker: dramatiq.Worker | None = None
    _lock: IO[Any] | None = None

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        db = Database(settings.resolved_database_url)
        jobs = JobRepository(db)
        notifier = InProcessNotifier()
        events = EventLog(jobs, notifier)
        models = ModelRegistry(ModelRepository(db))
        signer = UrlSigner(settings.resolved_signing_key)
        storage = open_storage(settings.resolved_storage_url, signer)
        # The actor is declared in every process (senders need it too); it runs jobs only
        # where a worker was started and ``executor`` below is set.
        executor: list[JobExecutor] = []

        def run_job(job_id: str) -> None:
            executor[0].run(job_id)

        queue = DramatiqQueue(make_broker(settings.broker_url), run_job, settings.job_time_limit_s)
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
            storage=storage,
            queue=queue,
            service=JobService(
                jobs, events, models, queue.enqueue, limits, settings.default_model_id
            ),
            reaper=Reaper(jobs, events, queue.enqueue),
            _executor=executor,
        )
        return runtime

    def prepare(self) -> None:
        """Migrate the schema and make sure the default model exists."""
        self.db.upgrade()
        if self.models.get(self.settings.default_model_id) is None:
            log.info("model.creating_default", model_id=self.settings.default_model_id)
            create_tiny_model(self.models, self.settings.models_dir, self.settings.default_model_id)

    def start_embedded_worker(self) -> None:
        """Run jobs in this process: lock the data dir, recover, start consuming."""
        self._lock_data_dir()
        self._runner = RunnerHost()
        default = self.models.get(self.settings.default_model_id)
        if default is not None:
            self._runner.preload(ModelRef.of(default))
        else:
            self._runner.start()
        self._executor.append(
            JobExecutor(
                self.jobs,
                self.events,
                self.notifier,
                self.models,
                self.storage,
                self._runner,
                ExecutorSettings(
                    worker_id=self.worker_id,
                    lease_s=self.settings.lease_s,
                    heartbeat_s=self.settings.heartbeat_s,
                    time_limit_s=self.settings.job_time_limit_s,
                ),
            )
        )
        # One process owns this data dir, so every running job is an orphan of a previous one.
        self.reaper.requeue_orphans(expired_before=None)
        self._worker = self.queue.worker({GPU_QUEUE}, threads=1)
        self._worker.start()
        recovered = self.reaper.enqueue_queued()
        log.info("worker.started", worker_id=self.worker_id, recovered=recovered)

    def readiness_probes(self) -> dict[str, Callable[[], None]]:
        return {"database": self.db.ping, "queue": self._check_queue, "storage": self.storage.check}

    def _check_queue(self) -> None:
        if self._worker is not None and not all(t.is_alive() for t in self._worker.workers):
            raise RuntimeError("the worker thread has stopped")
        client = getattr(self.queue.broker, "client", None)
        if client is not None:
            client.ping()

    def stop(self) -> None:
        for executor in self._executor:
            executor.stop()
        if self._worker is not None:
            self._worker.stop(timeout=30_000)
        if self._runner is not None:
            self._runner.stop()
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
