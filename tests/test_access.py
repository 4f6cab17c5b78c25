"""API keys and tenants: every route but the public ones wants a key; a tenant sees only its
own jobs and downloads, as if no other existed; a key does only what its scopes allow."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from dreamforge.cli import app
from dreamforge.config import Settings
from dreamforge.domain.access import Scope
from dreamforge.domain.jobs import JobStatus
from dreamforge.runners.fake import FakeRunner
from dreamforge.runtime import Runtime
from dreamforge.store.db import Database
from tests.conftest import ApiThread, free_port, register_tiny
from tests.helpers import read_stream, submit, tiny_spec, wait_for

# What anyone may call: probes, the API's description, and artifact URLs (bearer links,
# signed for one object and expiring).
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/artifacts/{key}"),
}
ALL = frozenset(Scope)


@dataclasses.dataclass
class Secured:
    url: str
    runtime: Runtime
    keys: dict[str, str]  # name -> key

    def client(self, name: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.keys[name]}"} if name else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Secured]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("secured"),
        port=free_port(),
        sse_ping_s=1.0,
        hf_endpoint="http://127.0.0.1:9",  # downloads here go nowhere, and fail fast
    )  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with ApiThread(settings, run_worker=True, runner=FakeRunner(step_s=0.001)) as api:
        access = api.runtime.access
        keys = {
            "alice": access.create("alice", ALL).key,
            "bob": access.create("bob", ALL).key,
            "reader": access.create("alice", frozenset({Scope.JOBS_READ})).key,
        }
        yield Secured(api.url, api.runtime, keys)


def operations(client: httpx.Client) -> list[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    return [
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


def concrete(path: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "0"), path)


def call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    body: dict[str, Any] | None = None
    if method == "POST" and path == "/v1/jobs":
        body = {"prompt": "a fox", "steps": 2}
    elif method == "POST" and path == "/v1/models":
        body = {"source": "hf:someone/some-model"}
    if path.endswith("/stream"):
        with client.stream(method, path) as response:
            response.read() if response.status_code >= 400 else None
            return response
    return client.request(method, path, json=body)


def test_every_route_but_the_public_ones_wants_a_key(secured: Secured) -> None:
    with secured.client(None) as anonymous, secured.client("alice") as alice:
        job = alice.post("/v1/jobs", json={"prompt": "mine", "steps": 2}).json()
        ids = {"job_id": job["id"], "model_id": "tiny-sdxl", "download_id": job["id"]}
        found = operations(anonymous)
        assert len(found) >= 15
        for method, path in found:
            if (method, path) in PUBLIC:
                continue
            response = call(anonymous, method, concrete(path, ids))
            assert response.status_code == 401, (method, path, response.status_code)
            body = response.json()
            if path.startswith("/v1/images/"):  # OpenAI's error shape there
                assert body["error"]["code"] == "invalid_api_key"
            else:
                assert body["code"] == "UNAUTHORIZED"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = httpx.Client(
            base_url=secured.url, headers={"Authorization": "Bearer df_0000_nothing"}
        )
        assert wrong.get("/v1/jobs").status_code == 401
        assert anonymous.get("/healthz").status_code == 200


def test_another_tenants_jobs_are_not_found_on_any_route(secured: Secured) -> None:
    with secured.client("alice") as alice, secured.client("bob") as bob:
        job = alice.post("/v1/jobs", json={"prompt": "alice's", "steps": 2}).json()
        read_stream(alice, job["id"], timeout=30)
        download = alice.post("/v1/models", json={"source": "hf:someone/some-model"}).json()
        ids = {"job_id": job["id"], "download_id": download["id"]}
        checked = 0
        for method, path in operations(bob):
            if ("{job_id}" not in path and "{download_id}" not in path) or "/admin/" in path:
                continue
            response = call(bob, method, concrete(path, ids))
            assert response.status_code == 404, (method, path, response.status_code)
            checked += 1
        assert checked >= 8
        assert job["id"] not in [j["id"] for j in bob.get("/v1/jobs").json()["data"]]
        assert job["id"] in [j["id"] for j in alice.get("/v1/jobs").json()["data"]]
        # The owner still sees it all, and an image URL works for whoever holds it.
        artifact = alice.get(job["links"]["artifacts"]).json()["data"][0]
        assert httpx.get(artifact["url"]).status_code == 200


def test_a_key_does_only_what_its_scopes_allow(secured: Secured) -> None:
    with secured.client("reader") as reader, secured.client("alice") as alice:
        refused = reader.post("/v1/jobs", json={"prompt": "a fox", "steps": 2})
        assert refused.status_code == 403 and "jobs:write" in refused.json()["detail"]
        job = alice.post("/v1/jobs", json={"prompt": "a fox", "steps": 2}).json()
        assert reader.get(f"/v1/jobs/{job['id']}").status_code == 200  # same tenant
        assert reader.post(f"/v1/jobs/{job['id']}/cancel").status_code == 403
        assert reader.post("/v1/models", json={"source": "hf:a/b"}).status_code == 403
        assert reader.get("/v1/admin/dlq").status_code == 403


def test_a_revoked_key_stops_working(secured: Secured) -> None:
    issued = secured.runtime.access.create("carol", ALL)
    headers = {"Authorization": f"Bearer {issued.key}"}
    assert httpx.get(f"{secured.url}/v1/jobs", headers=headers).status_code == 200
    secured.runtime.access.revoke(issued.record.id)
    assert httpx.get(f"{secured.url}/v1/jobs", headers=headers).status_code == 401


def test_idempotency_keys_belong_to_their_tenant(secured: Secured) -> None:
    with secured.client("alice") as alice, secured.client("bob") as bob:
        headers = {"Idempotency-Key": "order-1234"}
        body = {"prompt": "the same request", "steps": 2}
        first = alice.post("/v1/jobs", json=body, headers=headers).json()
        other = bob.post("/v1/jobs", json=body, headers=headers).json()
        again = alice.post("/v1/jobs", json=body, headers=headers).json()
        assert first["id"] == again["id"] != other["id"]


def test_keys_from_the_command_line_are_shown_once_and_stored_hashed(tmp_path: Path) -> None:
    runner = CliRunner()
    made = runner.invoke(
        app,
        ["key", "create", "--tenant", "acme", "--scopes", "jobs:read", "--data-dir", str(tmp_path)],
    )
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert key.startswith("df_")
    stored = Database(Settings(data_dir=tmp_path).resolved_database_url).engine
    with stored.connect() as connection:
        rows = [dict(r._mapping) for r in connection.execute(text("SELECT * FROM api_keys"))]
    assert rows[0]["key_sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in str(rows)
    listed = runner.invoke(app, ["key", "list", "--data-dir", str(tmp_path)])
    assert "acme" in listed.output and "jobs:read" in listed.output and key not in listed.output
    bad = runner.invoke(
        app,
        [
            "key",
            "create",
            "--tenant",
            "acme",
            "--scopes",
            "jobs:everything",
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert bad.exit_code == 1 and "jobs:write" in bad.output
    key_id = key.split("_")[1]
    assert runner.invoke(app, ["key", "revoke", key_id, "--data-dir", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["key", "revoke", key_id, "--data-dir", str(tmp_path)]).exit_code == 1


def test_serving_beyond_loopback_without_keys_is_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    refused = runner.invoke(app, ["api", "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert refused.exit_code == 1
    assert "refusing to serve 0.0.0.0 without API keys" in refused.output
    assert "--insecure-no-auth" in refused.output


def test_cors_is_off_unless_origins_are_set(tmp_path: Path, tiny_model_dir: Path) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    for origins, allowed in (([], False), (["https://app.example"], True)):
        settings = Settings(
            data_dir=tmp_path / str(allowed), port=free_port(), cors_origins=origins
        )  # type: ignore[call-arg]
        register_tiny(settings.resolved_database_url, tiny_model_dir)
        with ApiThread(settings, run_worker=False) as api:
            answer = httpx.options(f"{api.url}/v1/jobs", headers=preflight)
            granted = answer.headers.get("access-control-allow-origin")
            assert granted == ("https://app.example" if allowed else None), answer.headers
            if allowed:
                assert "authorization" in answer.headers["access-control-allow-headers"].lower()
                other = httpx.options(
                    f"{api.url}/v1/jobs", headers={**preflight, "Origin": "https://evil.example"}
                )
                assert "access-control-allow-origin" not in other.headers
                simple = httpx.get(
                    f"{api.url}/v1/models", headers={"Origin": "https://app.example"}
                )
                assert simple.headers["access-control-allow-origin"] == "https://app.example"


def test_a_tenant_over_its_quota_gets_429_with_when_to_come_back(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        port=free_port(),
        quota_queued_jobs=2,
        tenant_quotas={"small": {"images_per_day": 5, "queued_jobs": 0}},
    )  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with ApiThread(settings, run_worker=False) as api:  # no worker: jobs stay queued
        access = api.runtime.access
        big = {"Authorization": f"Bearer {access.create('big', ALL).key}"}
        small = {"Authorization": f"Bearer {access.create('small', ALL).key}"}
        with httpx.Client(base_url=api.url, timeout=30) as client:
            for _ in range(2):
                assert client.post("/v1/jobs", json={"prompt": "a"}, headers=big).status_code == 202
            over = client.post("/v1/jobs", json={"prompt": "a"}, headers=big)
            assert over.status_code == 429 and over.json()["code"] == "QUOTA_EXCEEDED"
            assert "2 of your jobs are waiting in the queue" in over.json()["detail"]
            assert over.headers["Retry-After"] == over.headers["RateLimit-Reset"] == "10"
            assert over.headers["RateLimit-Limit"] == "2"
            job = client.get("/v1/jobs", headers=big).json()["data"][0]
            client.post(job["links"]["cancel"], headers=big)  # one fewer waiting: room again
            assert client.post("/v1/jobs", json={"prompt": "a"}, headers=big).status_code == 202

            # Another tenant has quotas of its own: five images a day, any number at once.
            ok = client.post("/v1/jobs", json={"prompt": "a", "count": 3}, headers=small)
            assert ok.status_code == 202
            over = client.post("/v1/jobs", json={"prompt": "a", "count": 3}, headers=small)
            assert over.status_code == 429
            assert over.json()["errors"][0]["field"] == "count"
            assert "2 left today" in over.json()["detail"]
            assert over.headers["RateLimit-Remaining"] == "2"
            assert 0 < int(over.headers["Retry-After"]) <= 86_401
            assert (
                client.post("/v1/jobs", json={"prompt": "a", "count": 2}, headers=small).status_code
                == 202
            )


def test_a_tenant_at_its_running_limit_waits_in_the_queue_while_others_run(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """Checked when a worker claims: the job stays queued, says why once in its log, and
    runs when one of the tenant's jobs ends; another tenant's job is not held up."""
    settings = Settings(
        data_dir=tmp_path,
        port=free_port(),
        quota_running_jobs=1,
        tenant_quotas={"roomy": {"running_jobs": 0}},
    )  # type: ignore[call-arg]
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    with ApiThread(settings, run_worker=True, runner=FakeRunner(step_s=0.01)) as api:
        runtime = api.runtime
        busy = {"Authorization": f"Bearer {runtime.access.create('busy', ALL).key}"}
        roomy = {"Authorization": f"Bearer {runtime.access.create('roomy', ALL).key}"}
        # One of busy's jobs is rendering on another worker.
        elsewhere = str(uuid.uuid4())
        runtime.jobs.create(elsewhere, tiny_spec(), [], tenant="busy")
        assert runtime.writer.claim(elsewhere, "gpu-elsewhere", 60) is not None
        with (
            httpx.Client(base_url=api.url, timeout=30, headers=busy) as busy_client,
            httpx.Client(base_url=api.url, timeout=30, headers=roomy) as roomy_client,
        ):
            held = submit(busy_client, prompt="held back")
            other = submit(roomy_client, prompt="not held back")
            assert wait_for(roomy_client, other["id"], {"succeeded"})

            time.sleep(3.0)  # more than one try at claiming it, 2 s apart
            job = busy_client.get(held["links"]["self"]).json()
            assert job["status"] == "queued" and job["stage"] == "quota_wait", job
            log = busy_client.get(held["links"]["logs"]).text
            waiting = [line for line in log.splitlines() if "waiting: tenant busy" in line]
            assert len(waiting) == 1, log  # said once, however many tries

            runtime.writer.end(elsewhere, JobStatus.SUCCEEDED, [], owner="gpu-elsewhere")
            assert wait_for(busy_client, held["id"], {"succeeded"})
