"""Webhooks: a job's end is told to the URL it named, signed per Standard Webhooks (checked
here with the ``standardwebhooks`` package), retried until the receiver takes it, and every
attempt is in the job's log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook
from typer.testing import CliRunner

from dreamforge.cli import app
from dreamforge.config import Settings
from dreamforge.runners.fake import FakeRunner
from tests.conftest import ApiThread, free_port, register_tiny
from tests.helpers import durable, last_id, read_stream, submit
from tests.hubs import LocalHttpServer


class Receiver:
    """Answers 500 to the first ``failures`` deliveries, then 200; keeps them all."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.got: list[tuple[bytes, dict[str, str]]] = []
        self.app = FastAPI()

        @self.app.post("/hooks")
        async def hook(request: Request) -> Response:
            self.got.append((await request.body(), dict(request.headers)))
            return Response(status_code=500 if len(self.got) <= self.failures else 204)


def test_a_jobs_end_is_delivered_signed_and_retried(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, port=free_port(), webhook_hosts=["127.0.0.1"], sse_ping_s=1.0
    )  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    receiver = Receiver(failures=2)
    with (
        LocalHttpServer(receiver.app) as hooks,
        ApiThread(settings, run_worker=True, runner=FakeRunner(step_s=0.001)) as api,
        httpx.Client(base_url=api.url, timeout=30) as client,
    ):
        job = submit(client, prompt="tell me", count=2, webhook_url=f"{hooks.url}/hooks")
        events = read_stream(client, job["id"], timeout=30)
        deadline = time.monotonic() + 60
        while len(receiver.got) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        # Resumed after `done`, the stream sends the webhook's lines and ends.
        after = read_stream(client, job["id"], last_event_id=last_id(events), timeout=30)

    assert len(receiver.got) == 3
    ids = {headers["webhook-id"] for _, headers in receiver.got}
    assert len(ids) == 1  # one delivery, tried three times: the receiver can tell
    body, headers = receiver.got[-1]
    secret = CliRunner().invoke(app, ["webhook", "secret", "--data-dir", str(tmp_path)])
    told: dict[str, Any] = Webhook(secret.output.strip()).verify(body, headers)
    assert told["type"] == "job.succeeded" and told["data"]["id"] == job["id"]
    assert [a["item_index"] for a in told["data"]["artifacts"]] == [0, 1]
    try:  # another secret: the signature does not hold
        Webhook("whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB").verify(body, headers)
    except Exception as exc:  # noqa: BLE001 - the library's WebhookVerificationError
        assert "signature" in str(exc).lower()
    else:
        raise AssertionError("a signature checked with another secret passed")
    said = [e.data["message"] for e in durable(after) if e.type == "log"]
    assert said == [
        "webhook to 127.0.0.1 failed: HTTP 500",
        "webhook to 127.0.0.1 failed: HTTP 500",
        "webhook delivered to 127.0.0.1: HTTP 204",
    ]
    assert "webhook_url" not in str(events)  # nor in the receipt: not part of the spec


def test_a_webhook_to_a_host_not_allowed_is_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = Settings(data_dir=tmp_path, port=free_port())  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with ApiThread(settings, run_worker=False) as api:
        refused = httpx.post(
            f"{api.url}/v1/jobs",
            json={"prompt": "a", "webhook_url": "https://attacker.example/steal"},
        )
    assert refused.status_code == 422
    (problem,) = refused.json()["errors"]
    assert problem["field"] == "webhook_url" and "DREAMFORGE_WEBHOOK_HOSTS" in problem["fix"]
