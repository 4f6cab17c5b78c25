"""Webhooks: a job's end, told to the URL it named, from the io queue.

Signed per Standard Webhooks (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)
with the ``standardwebhooks`` package. The id is the same on every attempt, so a receiver
that got it twice can tell. A delivery that fails raises, and Dramatiq's retries send it
again later; each attempt is written in the job's log.
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook

from dreamforge.domain.clock import utcnow
from dreamforge.domain.events import LogLevel, log_event
from dreamforge.domain.records import Job
from dreamforge.events.writer import JobWriter
from dreamforge.store.jobs import JobRepository


class WebhookFailed(Exception):
    """The receiver did not take it; Dramatiq tries again after a wait."""


def payload(job: Job, artifacts: list[dict[str, Any]]) -> dict[str, Any]:
    """The Standard Webhooks envelope: a type, a timestamp, and the job as data."""
    return {
        "type": f"job.{job.status.value}",
        "timestamp": (job.finished_at or utcnow()).isoformat().replace("+00:00", "Z"),
        "data": {
            "id": job.id,
            "status": job.status.value,
            "error": job.error.model_dump(mode="json") if job.error else None,
            "attempts": job.attempts,
            "created_at": job.created_at.isoformat().replace("+00:00", "Z"),
            "finished_at": job.finished_at.isoformat().replace("+00:00", "Z")
            if job.finished_at
            else None,
            "artifacts": artifacts,
        },
    }


class WebhookSender:
    def __init__(
        self, jobs: JobRepository, writer: JobWriter, secret: str, timeout_s: float = 10.0
    ) -> None:
        self._jobs = jobs
        self._writer = writer
        self._webhook = Webhook(secret)
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def send(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.webhook_url is None or not job.status.is_terminal:
            return
        artifacts = [
            {"key": a.key, "item_index": a.item_index, "seed": a.seed, "sha256": a.sha256}
            for a in self._jobs.artifacts(job_id)
        ]
        body = json.dumps(payload(job, artifacts))
        # One id per ending (a job sent back from the DLQ ends again): every attempt of
        # this delivery shares it.
        ending = f"{job.id}/{job.finished_at.isoformat() if job.finished_at else ''}"
        message_id = f"msg_{uuid.uuid5(uuid.NAMESPACE_URL, ending).hex}"
        sent_at = utcnow()
        headers = {
            "content-type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": self._webhook.sign(message_id, sent_at, body),
        }
        host = urlsplit(job.webhook_url).hostname
        try:
            response = self._client.post(job.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self._say(job, f"webhook to {host} failed: {type(exc).__name__}", LogLevel.WARNING)
            raise WebhookFailed(str(exc)) from exc
        if not response.is_success:
            said = f"webhook to {host} failed: HTTP {response.status_code}"
            self._say(job, said, LogLevel.WARNING)
            raise WebhookFailed(said)
        self._say(job, f"webhook delivered to {host}: HTTP {response.status_code}")

    def _say(self, job: Job, message: str, level: LogLevel = LogLevel.INFO) -> None:
        self._writer.record(job.id, [log_event(message, level, "done")])

    def close(self) -> None:
        self._client.close()
