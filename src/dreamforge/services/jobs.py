"""The job service: what the API does when a client creates or cancels a job."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Protocol

import structlog

from dreamforge.domain.clock import utcnow
from dreamforge.domain.errors import Conflict, ErrorCode, FieldProblem, InvalidRequest
from dreamforge.domain.events import DoneData, log_event, status_event
from dreamforge.domain.jobs import (
    CANCEL_QUEUED,
    MAX_SEED,
    JobRequest,
    JobStatus,
    Limits,
    check_limits,
    resolve_spec,
    seed_list,
)
from dreamforge.domain.progress import Stage
from dreamforge.domain.quotas import Quota, check_quota, day_start
from dreamforge.domain.records import IdempotencyKey, Job, Model
from dreamforge.events.writer import JobWriter
from dreamforge.metrics import JOBS_CREATED
from dreamforge.models.fetch import host_allowed
from dreamforge.models.formats import UPSCALER
from dreamforge.models.registry import REMOTE_FORMAT, ModelRegistry
from dreamforge.queue.tasks import queue_for
from dreamforge.runners.replicate import SCHEDULERS as REMOTE_SCHEDULERS
from dreamforge.store.jobs import JobPage, JobRepository, KeyTaken

log = structlog.get_logger(__name__)


class Enqueue(Protocol):
    def __call__(self, job_id: str, delay_s: float = 0.0, queue: str | None = None) -> None: ...


class JobService:
    def __init__(
        self,
        jobs: JobRepository,
        writer: JobWriter,
        models: ModelRegistry,
        enqueue: Enqueue,
        limits: Limits,
        default_model_id: str,
        idempotency_key_ttl_s: float = 24 * 3600,
        quota_for: Callable[[str], Quota] = lambda _: Quota(),
        webhook_hosts: Sequence[str] = (),
    ) -> None:
        self._jobs = jobs
        self._writer = writer
        self._models = models
        self._enqueue = enqueue
        self._limits = limits
        self._default_model_id = default_model_id
        self._key_ttl = timedelta(seconds=idempotency_key_ttl_s)
        self._quota_for = quota_for
        self._webhook_hosts = list(webhook_hosts)

    def submit(self, request: JobRequest, idempotency_key: str | None, tenant: str) -> Job:
        """Create and queue the job for ``tenant``. With an ``idempotency_key`` (the IETF
        draft's ``Idempotency-Key``), the same key with the same request gives back the job
        it created; with another request, an ``IDEMPOTENCY_KEY_REUSED`` problem. Keys are
        the tenant's own: two tenants may pick the same one."""
        if idempotency_key is None:
            return self._create(request, None, tenant)
        scoped = hashlib.sha256(f"{tenant}\n{idempotency_key}".encode()).hexdigest()
        key = IdempotencyKey(scoped, _fingerprint(request))
        found = self._jobs.job_for_key(key.key, utcnow() - self._key_ttl)
        if found is not None:
            return self._replay(key, *found)
        try:
            return self._create(request, key, tenant)
        except KeyTaken:  # a concurrent create with this key got there first
            found = self._jobs.job_for_key(key.key, utcnow() - self._key_ttl)
            assert found is not None, "a key that is taken is recorded"
            return self._replay(key, *found)

    def _replay(self, key: IdempotencyKey, job_id: str, request_sha256: str) -> Job:
        if request_sha256 != key.request_sha256:
            raise InvalidRequest(
                [
                    FieldProblem(
                        "Idempotency-Key",
                        "this key was used with another request body",
                        "send a new key for a new request; reuse a key only to retry",
                    )
                ],
                code=ErrorCode.IDEMPOTENCY_KEY_REUSED,
            )
        return self._jobs.require(job_id)

    def _ready_model(self, model_id: str, field: str, base: str) -> Model:
        """The registered, ready model of ``base`` that ``field`` names; else a problem."""
        model = self._models.get(model_id)
        if model is None:
            raise InvalidRequest(
                [
                    FieldProblem(
                        field,
                        f"no model {model_id!r} is registered",
                        "use the id of a model listed by GET /v1/models",
                    )
                ],
                code=ErrorCode.MODEL_NOT_FOUND,
            )
        if model.status != "ready":
            raise InvalidRequest(
                [
                    FieldProblem(
                        field,
                        f"model {model_id!r} is {model.status}",
                        "wait until GET /v1/models/{id} says ready, or pick another",
                    )
                ],
                code=ErrorCode.MODEL_NOT_READY,
            )
        if model.base != base:
            wanted = "an upscaler" if base == UPSCALER else f"a {base} model"
            raise InvalidRequest(
                [
                    FieldProblem(
                        field,
                        f"model {model_id!r} is {model.base}, not {wanted}",
                        f"name {wanted} here (GET /v1/models lists each model's base)",
                    )
                ]
            )
        return model

    def _create(self, request: JobRequest, key: IdempotencyKey | None, tenant: str) -> Job:
        model_id = request.model_id or self._default_model_id
        model = self._ready_model(model_id, "model_id", "sdxl")
        if model.format == REMOTE_FORMAT and request.then:
            raise InvalidRequest(
                [
                    FieldProblem(
                        "then",
                        f"model {model_id!r} renders on a hosted API, where chains do not run",
                        "leave out then, or name a local model",
                    )
                ]
            )
        for index, step in enumerate(request.then):
            if step.model_id is not None:
                base = UPSCALER if step.type == "upscale" else "sdxl"
                self._ready_model(step.model_id, f"then.{index}.model_id", base)
        spec = resolve_spec(
            request, model_id, model.defaults, lambda: secrets.randbelow(MAX_SEED + 1)
        )
        problems = check_limits(spec, self._limits)
        if model.format == REMOTE_FORMAT and spec.scheduler not in REMOTE_SCHEDULERS:
            offered = ", ".join(s.value for s in REMOTE_SCHEDULERS)
            problems.append(
                FieldProblem(
                    "scheduler",
                    f"model {model_id!r} renders on Replicate, which has no "
                    f"{spec.scheduler.value} sampler",
                    f"use one of: {offered}",
                )
            )
        if request.webhook_url and not host_allowed(request.webhook_url, self._webhook_hosts):
            allowed = ", ".join(self._webhook_hosts) or "none: webhooks are off on this server"
            problems.append(
                FieldProblem(
                    "webhook_url",
                    "this server does not send webhooks to that host",
                    f"use a host it allows ({allowed}; DREAMFORGE_WEBHOOK_HOSTS)",
                )
            )
        if problems:
            raise InvalidRequest(problems)
        quota = self._quota_for(tenant)
        if quota.checked_at_create:  # no query when there is no quota
            now = utcnow()
            check_quota(quota, self._jobs.usage(tenant, day_start(now)), spec.count, now)
        job = self._writer.create(
            str(uuid.uuid4()),
            spec,
            [
                status_event(JobStatus.QUEUED),
                log_event(
                    f"accepted: {spec.count} x {spec.width}x{spec.height}, {spec.steps} steps, "
                    f"seeds {seed_list(spec.seeds())}, model {model_id}",
                    stage=Stage.QUEUED,
                ),
            ],
            key,
            utcnow() - self._key_ttl,
            tenant,
            request.webhook_url,
        )
        JOBS_CREATED.inc()
        try:
            self._enqueue(job.id, queue=queue_for(model))
        except Exception:  # the job is safe in the database; the reaper sends it later
            log.exception("job.enqueue_failed", job_id=job.id)
        return job

    def get(self, job_id: str, tenant: str) -> Job:
        return self._jobs.require(job_id, tenant)

    def page(
        self, status: JobStatus | None, limit: int, cursor: str | None, tenant: str
    ) -> JobPage:
        try:
            return self._jobs.page(status, limit, cursor, tenant)
        except ValueError as exc:
            raise InvalidRequest(
                [
                    FieldProblem(
                        "cursor",
                        "not a cursor this API issued",
                        "pass next_cursor from a previous page",
                    )
                ]
            ) from exc

    def cancel(self, job_id: str, tenant: str) -> Job:
        """A queued job ends ``canceled`` at once; a running one is asked to stop."""
        job = self.get(job_id, tenant)
        if job.status is JobStatus.QUEUED:
            canceled = self._writer.transition(
                job_id,
                CANCEL_QUEUED,
                [
                    log_event("canceled before it started", stage=Stage.QUEUED),
                    status_event(JobStatus.CANCELED),
                    DoneData(status=JobStatus.CANCELED, error=None),
                ],
                cancel_requested=True,
                finished_at=utcnow(),
                stage=Stage.DONE.value,
            )
            if canceled is not None:
                return self.get(job_id, tenant)
            job = self.get(job_id, tenant)  # a worker claimed it meanwhile: cancel it running
        if job.status is JobStatus.RUNNING:
            if not job.cancel_requested:
                self._writer.request_cancel(job_id, job.stage)
            return self.get(job_id, tenant)
        if job.status is JobStatus.CANCELED:
            return job
        raise Conflict(f"job {job_id} already {job.status.value}; there is nothing to cancel")


def _fingerprint(request: JobRequest) -> str:
    """The request as sent, canonical: the same fields give the same sha256."""
    canonical = request.model_dump_json(exclude_unset=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
