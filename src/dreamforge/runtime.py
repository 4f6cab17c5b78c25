"""Wiring: builds every adapter and service from the settings, and starts and stops the
worker.

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
from functools import cached_property
from pathlib import Path
from typing import IO, Any

import dramatiq
import structlog
from prometheus_client import CollectorRegistry

from dreamforge import metrics
from dreamforge.artifacts.seal import Sealer
from dreamforge.artifacts.signing import UrlSigner
from dreamforge.artifacts.storage import ArtifactStorage, open_storage
from dreamforge.config import Settings
from dreamforge.domain.jobs import Limits
from dreamforge.events.follow import JobEvents
from dreamforge.events.notifier import InProcessNotifier, Notifier
from dreamforge.events.writer import JobWriter
from dreamforge.models.pull import PullSettings
from dreamforge.models.registry import REMOTE_FORMAT, ModelRegistry, create_tiny_model
from dreamforge.queue import broker as brokers
from dreamforge.queue.broker import GPU_QUEUE, IO_QUEUE, REMOTE_QUEUE
from dreamforge.queue.reaper import Reaper
from dreamforge.queue.tasks import Tasks, queue_for
from dreamforge.runners.protocol import ModelRef, Runner
from dreamforge.runners.replicate import ReplicateRunner
from dreamforge.services.access import AccessService
from dreamforge.services.artifacts import ArtifactService
from dreamforge.services.dead_letters import DeadLetterQueue
from dreamforge.services.downloads import DownloadService
from dreamforge.services.jobs import JobService
from dreamforge.services.retention import Retention
from dreamforge.store.db import Database
from dreamforge.store.downloads import DownloadRepository
from dreamforge.store.jobs import JobRepository
from dreamforge.store.keys import KeyRepository
from dreamforge.store.models import ModelRepository
from dreamforge.worker.downloads import DownloadWorker
from dreamforge.worker.lifecycle import JobLifecycle, LeaseSettings
from dreamforge.worker.periodic import Every
from dreamforge.worker.steps import StepDriver
from dreamforge.worker.webhooks import WebhookSender

log = structlog.get_logger(__name__)


class DataDirInUse(RuntimeError):
    pass


def make_notifier(settings: Settings, serves_streams: bool) -> Notifier:
    if settings.broker_url.startswith("memory://"):
        return InProcessNotifier()
    from dreamforge.events.redis_notifier import RedisNotifier

    return RedisNotifier(settings.broker_url, settings.redis_namespace, serves_streams)


def default_runner(settings: Settings) -> Runner:
    from dreamforge.runners.compile_options import CompileOptions
    from dreamforge.runners.process import SdxlProcessRunner  # the child imports torch

    return SdxlProcessRunner(
        memory_budget_bytes=settings.resident_models_bytes or None,
        compiling=CompileOptions(
            settings.compile_unet,
            settings.compile_scope,
            settings.compile_vae,
            settings.resolved_compile_cache_dir,
        ),
    )


@dataclass
class _Worker:
    """What a process that runs jobs holds on to."""

    runners: list[Runner]  # the local pipeline, and the remote provider's where it runs
    lifecycles: list[JobLifecycle]
    consumers: list[dramatiq.Worker]  # one per queue: a download never holds up a job
    reaper: Every
    garbage: Every | None = None  # retention, on io workers


@dataclass
class Runtime:
    settings: Settings
    db: Database
    jobs: JobRepository
    models: ModelRegistry
    notifier: Notifier
    writer: JobWriter
    storage: ArtifactStorage
    tasks: Tasks
    job_service: JobService
    job_events: JobEvents
    artifact_service: ArtifactService
    download_service: DownloadService
    dead_letters: DeadLetterQueue
    access: AccessService
    retention: Retention
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
        models = ModelRegistry(ModelRepository(db))

        def queue_of(job_id: str) -> str:
            job = jobs.get(job_id)
            model = models.get(job.spec.model_id) if job is not None else None
            return queue_for(model)

        tasks = Tasks(
            brokers.make_broker(settings.broker_url, settings.redis_namespace),
            max(settings.job_time_limit_s, settings.max_job_time_limit_s),
            settings.webhook_max_attempts,
            queue_of,
        )
        # Webhooks off (no allowed host): a job's end costs no message.
        on_done = tasks.enqueue_webhook if settings.webhook_hosts else None
        writer = JobWriter(jobs, notifier, on_done)
        signer = UrlSigner(settings.resolved_signing_key)
        storage = open_storage(settings, signer)
        limits = Limits(
            max_width=settings.max_width,
            max_height=settings.max_height,
            max_steps=settings.max_steps,
            max_time_limit_s=settings.max_job_time_limit_s,
            max_output_side=settings.max_output_side,
        )
        return cls(
            settings=settings,
            db=db,
            jobs=jobs,
            models=models,
            notifier=notifier,
            writer=writer,
            storage=storage,
            tasks=tasks,
            job_service=JobService(
                jobs,
                writer,
                models,
                tasks.enqueue_job,
                limits,
                settings.default_model_id,
                settings.idempotency_key_ttl_s,
                settings.quota_for,
                settings.webhook_hosts,
            ),
            job_events=JobEvents(jobs, notifier),
            artifact_service=ArtifactService(jobs, storage, signer, settings.artifact_url_ttl_s),
            download_service=DownloadService(
                DownloadRepository(db), notifier, tasks.enqueue_download
            ),
            dead_letters=DeadLetterQueue(jobs, writer, tasks.enqueue_job),
            access=AccessService(KeyRepository(db)),
            retention=Retention(
                jobs, storage, settings.retention_days, settings.tenant_retention_days
            ),
            reaper=Reaper(
                jobs, writer, tasks.enqueue_job, tasks.pending_job_ids, settings.retry_policy
            ),
        )

    def prepare(self) -> None:
        """Migrate the schema and make sure the default model exists."""
        self.db.upgrade()
        if (
            self.settings.create_default_model
            and self.models.get(self.settings.default_model_id) is None
        ):
            log.info("model.creating_default", model_id=self.settings.default_model_id)
            create_tiny_model(self.models, self.settings.models_dir, self.settings.default_model_id)

    def start_embedded_worker(self, runner: Runner | None = None) -> None:
        """The embedded profile: this process alone owns the data dir, so every job that
        was running when it last stopped is an orphan, and goes back to the queue."""
        self._lock_data_dir()
        self.reaper.requeue_orphans(expired_before=None)
        queues = {GPU_QUEUE, IO_QUEUE}
        if self.settings.replicate_api_token is not None:
            queues.add(REMOTE_QUEUE)
        self.start_worker(queues, runner)
        recovered = self.reaper.send_queued()
        log.info("worker.recovered", jobs=recovered)

    def start_worker(self, queues: set[str], runner: Runner | None = None) -> None:
        """Consume ``queues`` in this process: one job at a time, on ``runner`` (by
        default the SDXL pipeline in a child process), and one download at a time."""
        if IO_QUEUE in queues:
            downloads = DownloadWorker(
                DownloadRepository(self.db),
                self.models,
                self.notifier,
                PullSettings.of(self.settings),
            )
            self.tasks.attach(download_model=downloads.run)
            if self.settings.webhook_hosts:
                sender = WebhookSender(
                    self.jobs, self.writer, self.settings.resolved_webhook_secret
                )
                self.tasks.attach(deliver_webhook=sender.send)
        runners: list[Runner] = []
        lifecycles: list[JobLifecycle] = []
        if GPU_QUEUE in queues:
            runner = runner or default_runner(self.settings)
            default = self.models.get(self.settings.default_model_id)
            if default is not None and default.format != REMOTE_FORMAT:
                runner.preload(ModelRef.of(default), default.defaults)
            lifecycles.append(self._lifecycle(runner))
            runners.append(runner)
            self.tasks.attach(run_job=lifecycles[-1].run)
        if REMOTE_QUEUE in queues:
            remote = ReplicateRunner.of(self.settings)
            lifecycles.append(self._lifecycle(remote))
            runners.append(remote)
            self.tasks.attach(run_remote_job=lifecycles[-1].run)
        consumers = [brokers.consumer(self.tasks.broker, {queue}) for queue in sorted(queues)]
        reaper = Every(
            self.settings.reaper_interval_s,
            lambda: self.reaper.sweep(self.settings.requeue_after_s),
            "dreamforge-reaper",
        )
        garbage = None
        if IO_QUEUE in queues and not self.retention.keeps_everything:
            garbage = Every(self.settings.gc_interval_s, self.retention.sweep, "dreamforge-gc")
        self._worker = _Worker(runners, lifecycles, consumers, reaper, garbage)
        for consumer in consumers:
            consumer.start()
        reaper.start()
        if garbage is not None:
            garbage.start()
        log.info("worker.started", worker_id=self.worker_id, queues=sorted(queues))

    def _lifecycle(self, runner: Runner) -> JobLifecycle:
        """Jobs from claim to end on ``runner``."""
        driver = StepDriver(
            self.jobs,
            self.writer,
            self.models,
            self.storage,
            runner,
            self.settings.progress_persist_s,
            self.settings.max_batch_size,
            Sealer(self.settings.resolved_signing_key),
            tile_px=self.settings.upscale_tile_px,
            progress_interval_s=self.settings.progress_interval_s,
        )
        lease = LeaseSettings(
            worker_id=self.worker_id,
            lease_s=self.settings.lease_s,
            heartbeat_s=self.settings.heartbeat_s,
            time_limit_s=self.settings.job_time_limit_s,
        )
        return JobLifecycle(
            self.jobs,
            self.writer,
            self.notifier,
            driver,
            lease,
            self.tasks.enqueue_job,
            self.settings.retry_policy,
            device_tolerance_bytes=self.settings.device_memory_tolerance_bytes,
            running_quota=(
                (lambda tenant: self.settings.quota_for(tenant).running_jobs)
                if self.settings.running_limits
                else None
            ),
            batch_window_s=self.settings.batch_window_s
            if self.settings.batch_across_jobs
            else None,
        )

    @cached_property
    def metrics(self) -> CollectorRegistry:
        """What ``/metrics`` reports from this process, waiting work included."""
        downloads = DownloadRepository(self.db)

        def queue_depth() -> dict[str, int]:
            return {GPU_QUEUE: self.jobs.count_queued(), IO_QUEUE: downloads.count_queued()}

        return metrics.registry(queue_depth)

    def readiness_probes(self) -> dict[str, Callable[[], None]]:
        return {
            "database": self.db.ping,
            "queue": self._check_queue,
            "storage": self.storage.check,
        }

    def _check_queue(self) -> None:
        if self._worker is not None and not all(
            t.is_alive() for c in self._worker.consumers for t in c.workers
        ):
            raise RuntimeError("the worker thread has stopped")
        brokers.ping(self.tasks.broker)

    def stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            for lifecycle in worker.lifecycles:
                lifecycle.stop()  # a job in hand goes back to the queue
            worker.reaper.stop()
            if worker.garbage is not None:
                worker.garbage.stop()
            # Consuming stops before anything is torn down: a message that arrives now
            # stays in the queue for another worker.
            for consumer in worker.consumers:
                consumer.stop(timeout=30_000)
            for runner in worker.runners:
                runner.stop()
        close = getattr(self.notifier, "close", None)
        if close is not None:
            close()
        self.tasks.broker.close()
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
