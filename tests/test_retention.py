"""Retention: finished jobs past their tenant's policy are deleted, their images first and
their rows after, on local files and on S3; what is too recent, another tenant's longer
policy, a dead letter or a job still queued stays; a storage failure deletes no row."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from dreamforge.cli import app
from dreamforge.config import Settings
from dreamforge.domain.clock import utcnow
from dreamforge.domain.jobs import JobStatus, finish
from dreamforge.domain.records import Artifact
from dreamforge.runtime import Runtime
from tests.helpers import tiny_spec

POLICY = {"retention_days": 7, "tenant_retention_days": {"patient": 30}}


@pytest.fixture(params=["local", "s3"])
def runtime(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    distributed_settings: Callable[..., Settings],
) -> Iterator[Runtime]:
    if request.param == "local":
        settings = Settings(data_dir=tmp_path, **POLICY)  # type: ignore[arg-type]
    else:
        settings = distributed_settings(**POLICY)
    built = Runtime.build(settings, serves_streams=False)
    built.db.upgrade()
    yield built
    built.stop()


def job_with_an_image(runtime: Runtime, tenant: str, days_ago: float | None) -> tuple[str, str]:
    """A job of ``tenant`` with one stored image, finished ``days_ago`` (None: queued)."""
    job_id = str(uuid.uuid4())
    runtime.jobs.create(job_id, tiny_spec(), [], tenant=tenant)
    key = f"jobs/{job_id}/00-generate/000.png"
    runtime.storage.put(key, b"\x89PNG not really", "image/png")
    artifact = Artifact(
        job_id, 0, "generate", 0, key, "image/png", 16, "0" * 64, 64, 64, 5, utcnow()
    )
    runtime.jobs.save_artifact(artifact, [])
    if days_ago is not None:
        runtime.jobs.claim(job_id, "w", 30, [])
        runtime.jobs.transition(job_id, finish(JobStatus.SUCCEEDED), [], finished_at=utcnow())
        with runtime.db.connection() as connection:
            connection.execute(
                text("UPDATE jobs SET finished_at = :at WHERE id = :id"),
                {"at": utcnow() - timedelta(days=days_ago), "id": job_id},
            )
    return job_id, key


def gone(runtime: Runtime, job_id: str, key: str) -> bool:
    return runtime.jobs.get(job_id) is None and not runtime.storage.exists(key)


def kept(runtime: Runtime, job_id: str, key: str) -> bool:
    found = runtime.jobs.get(job_id) is not None and runtime.storage.exists(key)
    return found and len(runtime.jobs.artifacts(job_id)) == 1


def test_expired_jobs_go_images_first_and_the_rest_stays(runtime: Runtime) -> None:
    old = job_with_an_image(runtime, "default", days_ago=10)
    recent = job_with_an_image(runtime, "default", days_ago=1)
    patient = job_with_an_image(runtime, "patient", days_ago=10)  # a 30-day policy
    patient_old = job_with_an_image(runtime, "patient", days_ago=40)
    queued = job_with_an_image(runtime, "default", days_ago=None)
    dead = job_with_an_image(runtime, "default", days_ago=10)
    with runtime.db.connection() as connection:
        connection.execute(
            text("UPDATE jobs SET dead_lettered_at = finished_at WHERE id = :id"), {"id": dead[0]}
        )

    swept = runtime.retention.sweep()

    assert (swept.jobs, swept.images, swept.failed) == (2, 2, 0)
    assert gone(runtime, *old) and gone(runtime, *patient_old)
    assert runtime.jobs.events(old[0]) == [] and runtime.jobs.artifacts(old[0]) == []
    for job in (recent, patient, queued, dead):
        assert kept(runtime, *job), job


def test_a_storage_failure_deletes_no_row(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = job_with_an_image(runtime, "default", days_ago=10)

    def refuse(key: str) -> None:
        raise ConnectionError("the object store hung up")

    monkeypatch.setattr(runtime.storage, "delete", refuse)
    swept = runtime.retention.sweep()
    assert swept.failed >= 1 and kept(runtime, *job)  # nothing orphaned: the row lists it
    monkeypatch.undo()
    assert runtime.retention.sweep().jobs >= 1 and gone(runtime, *job)


def test_gc_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    idle = runner.invoke(app, ["gc", "--data-dir", str(tmp_path)])
    assert idle.exit_code == 0 and "keeps everything" in idle.output
    monkeypatch.setenv("DREAMFORGE_RETENTION_DAYS", "7")
    runtime = Runtime.build(Settings(data_dir=tmp_path), serves_streams=False)
    job = job_with_an_image(runtime, "default", days_ago=8)
    swept = runner.invoke(app, ["gc", "--data-dir", str(tmp_path)])
    assert swept.exit_code == 0 and "deleted 1 job(s) and 1 image(s)" in swept.output
    assert gone(runtime, *job)
    runtime.stop()
