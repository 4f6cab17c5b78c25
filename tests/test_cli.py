"""The command line: migrations, the tiny model, and serve on an empty data dir."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import inspect, text
from structlog.testing import capture_logs
from typer.testing import CliRunner

from dreamforge.cli import app
from dreamforge.config import Settings, SettingsNotValid, read_settings
from dreamforge.store.db import Database
from tests.helpers import read_stream, submit, tiny_spec
from tests.processes import Serve

runner = CliRunner()


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    db = Database(Settings(data_dir=tmp_path).resolved_database_url)
    tables = set(inspect(db.engine).get_table_names())
    assert {"jobs", "job_events", "artifacts", "models", "alembic_version"} <= tables


def test_a_migration_is_logged_and_a_schema_up_to_date_is_not(tmp_path: Path) -> None:
    db = Database(Settings(data_dir=tmp_path).resolved_database_url)
    with capture_logs() as first:
        db.upgrade()
    with capture_logs() as again:
        db.upgrade()
    with db.connection() as connection:
        head = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert first == [
        {"event": "store.migrated", "from_revision": None, "to_revision": head, "log_level": "info"}
    ]
    assert again == []


def test_create_tiny_registers_safetensors_weights(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["model", "create-tiny", "--id", "mini", "--data-dir", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "registered mini" in result.output
    weights = list((tmp_path / "models" / "mini").rglob("*.safetensors"))
    assert len(weights) == 4  # two text encoders, the UNet and the VAE; nothing pickled
    assert not list((tmp_path / "models").rglob("*.bin"))
    assert sum(w.stat().st_size for w in weights) < 30e6

    listing = runner.invoke(app, ["model", "list", "--data-dir", str(tmp_path)])
    assert "mini" in listing.output and "ready" in listing.output


@pytest.mark.slow
def test_serve_on_an_empty_data_dir_can_generate_at_once(tmp_path: Path) -> None:
    server = Serve(tmp_path / "fresh", tmp_path / "serve.log")
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["tiny-sdxl"]
            job = submit(client)
            assert read_stream(client, job["id"])[-1].data["status"] == "succeeded"
        # The model was built, and the job rendered, in processes of their own: the server
        # never loaded torch, which it would carry (~750 MB) for as long as it runs.
        assert "libtorch" not in Path(f"/proc/{server.pid}/maps").read_text()
        tracker = [
            p
            for p in psutil.Process(server.pid).children()
            if "resource_tracker" in " ".join(p.cmdline())
        ]
    finally:
        server.stop(signal.SIGTERM)
    # uvicorn ends by the signal it was sent, so no exit handler runs: what the process
    # made for its children must be let go of before, or multiprocessing's resource
    # tracker reports it leaked once the server is gone.
    psutil.wait_procs(tracker, timeout=10)
    log = server.log.read_text()
    assert "leaked" not in log
    # A start, a job and a stop that all went well say nothing alarming.
    assert [line for line in log.splitlines() if "[warning" in line or "[error" in line] == []
    # The default model was loaded before any job asked for it; the log says how long it took.
    preloaded = re.search(r"runner\.preloaded .*model_id=tiny-sdxl seconds=[\d.]+.*", log)
    assert preloaded, log
    assert "job_id=" not in preloaded[0]  # heard during the first job, but not its own


@pytest.mark.slow
def test_serve_begins_the_pipeline_processes_imports_before_any_job(tmp_path: Path) -> None:
    """With no model to preload, the first job would otherwise pay for the fork server's
    imports (torch, transformers: seconds) itself."""
    settings = Settings(data_dir=tmp_path / "data", create_default_model=False)
    server = Serve(settings.data_dir, tmp_path / "serve.log", settings=settings)
    server.start()
    try:
        children = psutil.Process(server.pid).children()
        commands = [" ".join(p.cmdline()) for p in children]
        assert any("multiprocessing.forkserver" in c for c in commands), commands
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/v1/models").json()["data"] == []  # nothing was preloaded
    finally:
        server.stop(signal.SIGTERM)


def logged(log: Path, event: str) -> list[dict[str, object]]:
    """The lines of a JSON log that tell ``event``."""
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == event]


def test_the_default_models_preload_is_logged_when_it_ends_with_no_job_sent(
    tmp_path: Path,
) -> None:
    settings = Settings(data_dir=tmp_path / "data", log_format="json")
    log = tmp_path / "serve.log"
    server = Serve(settings.data_dir, log, settings=settings)
    server.start()
    try:
        deadline = time.monotonic() + 120
        while not (preloaded := logged(log, "runner.preloaded")):
            assert time.monotonic() < deadline, "the preload was never logged"
            time.sleep(0.2)
        assert preloaded[0]["model_id"] == settings.default_model_id
        assert "job_id" not in preloaded[0]
    finally:
        server.stop(signal.SIGTERM)


@pytest.mark.parametrize("command", [["serve"], ["api"], ["api", "--workers", "2"]])
def test_a_port_in_use_is_said_at_once_and_nothing_starts(
    tmp_path: Path, command: list[str]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        result = runner.invoke(app, [*command, "--port", str(port), "--data-dir", str(data)])
    assert result.exit_code == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output
    assert not data.exists()  # no database made, no model built


@pytest.mark.parametrize(
    ("command", "env", "said"),
    [
        (
            ["serve"],
            {"DREAMFORGE_MAX_BATCH_SIZE": "0", "DREAMFORGE_PORT": "http"},
            [
                "DREAMFORGE_MAX_BATCH_SIZE='0': Input should be greater than or equal to 1",
                "DREAMFORGE_PORT='http': Input should be a valid integer",
            ],
        ),
        (
            ["worker"],
            {"DREAMFORGE_HEARTBEAT_S": "20"},
            ["DREAMFORGE_LEASE_S (30) must be at least twice DREAMFORGE_HEARTBEAT_S (20)"],
        ),
        (
            ["api"],
            {"DREAMFORGE_JOB_TIME_LIMIT_S": "90000"},
            ["DREAMFORGE_JOB_TIME_LIMIT_S (90000), the limit of a job that asks for none"],
        ),
        (
            ["serve"],
            {"DREAMFORGE_CORS_ORIGINS": "https://app.example.com"},
            ["DREAMFORGE_CORS_ORIGINS: not valid JSON (Expecting value: line 1 column 1"],
        ),
    ],
    ids=["serve", "worker", "api", "not-json"],
)
def test_settings_that_are_not_valid_are_said_by_their_variables_and_nothing_starts(
    tmp_path: Path, command: list[str], env: dict[str, str], said: list[str]
) -> None:
    data = tmp_path / "data"
    result = runner.invoke(app, [*command, "--data-dir", str(data)], env=env)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())  # as Rich wrapped it
    assert output.startswith("error: the settings are not valid:")
    assert all(line in output for line in said), output
    assert "Traceback" not in output
    assert not data.exists()  # no database made, no model built


def test_a_secret_that_is_not_valid_is_not_repeated() -> None:
    with pytest.raises(SettingsNotValid) as raised:
        read_settings(signing_key=4711, hf_token=4712, database_url=4713)
    assert sorted(raised.value.lines) == [
        "DREAMFORGE_DATABASE_URL: Input should be a valid string",
        "DREAMFORGE_SIGNING_KEY: Input should be a valid string",
        "HF_TOKEN: Input should be a valid string",
    ]


def test_the_asgi_factory_says_which_settings_are_not_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dreamforge.api.asgi import create

    monkeypatch.setenv("DREAMFORGE_LEASE_S", "2")
    with pytest.raises(SystemExit) as raised:
        create()
    assert str(raised.value).startswith("the settings are not valid:\n  DREAMFORGE_LEASE_S (2)")


def test_dlq_lists_retries_and_purges_dead_lettered_jobs(tmp_path: Path) -> None:
    from dreamforge.domain.clock import utcnow
    from dreamforge.domain.errors import ErrorCode, JobError
    from dreamforge.domain.jobs import JobStatus, finish
    from dreamforge.runtime import Runtime

    runtime = Runtime.build(Settings(data_dir=tmp_path), serves_streams=False)
    runtime.db.upgrade()
    spec = tiny_spec()
    for job_id in ("job-a", "job-b"):
        runtime.jobs.create(job_id, spec, [])
        runtime.jobs.claim(job_id, "w", 30, [])
        error = JobError(code=ErrorCode.STORAGE_ERROR, message="the object store hung up")
        runtime.jobs.transition(
            job_id, finish(JobStatus.FAILED), [], error=error, dead_lettered_at=utcnow()
        )

    listed = runner.invoke(app, ["dlq", "list", "--data-dir", str(tmp_path)])
    assert listed.exit_code == 0 and "job-a" in listed.output and "STORAGE_ERROR" in listed.output
    retried = runner.invoke(app, ["dlq", "retry", "job-a", "--data-dir", str(tmp_path)])
    assert retried.exit_code == 0 and "queued again" in retried.output
    assert runtime.jobs.require("job-a").status is JobStatus.QUEUED
    again = runner.invoke(app, ["dlq", "retry", "job-a", "--data-dir", str(tmp_path)])
    assert again.exit_code == 1 and "not in the dead-letter queue" in again.output
    purged = runner.invoke(app, ["dlq", "purge", "--data-dir", str(tmp_path)])
    assert purged.exit_code == 0 and "1 job(s) taken out" in purged.output
    assert runtime.jobs.dead_letters() == []
    assert runtime.jobs.require("job-b").status is JobStatus.FAILED


def test_json_logs_are_one_object_a_line_and_name_the_job(tmp_path: Path) -> None:
    import json

    settings = Settings(data_dir=tmp_path / "data", log_format="json")
    server = Serve(tmp_path / "data", tmp_path / "serve.log", settings=settings)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            job = submit(client)
            read_stream(client, job["id"])
            url = client.get(job["links"]["artifacts"]).json()["data"][0]["url"]
            assert client.get(url).status_code == 200
    finally:
        server.stop(signal.SIGTERM)
    log = (tmp_path / "serve.log").read_text()
    # An image URL is a bearer link: the access log keeps the request, not the signature.
    signature = url.split("signature=")[1]
    assert signature not in log and "signature=[redacted]" in log
    lines = log.splitlines()
    objects = [json.loads(line) for line in lines if line.startswith("{")]
    # Everything logged is JSON: ours, uvicorn's, its access log's (the banner and the
    # pipeline's own warnings are printed, not logged).
    assert not [line for line in lines if "[info" in line or line.startswith("INFO:")]
    # Nor progress bars: the default model's build and its load in the pipeline process.
    assert not [line for line in lines if "it/s]" in line]
    finished = [o for o in objects if o.get("event") == "job.finished"]
    assert finished and finished[0]["job_id"] == job["id"] and finished[0]["tenant"] == "default"
    # Every line about the job names it and its tenant: the worker's and the API's, the
    # access lines of its routes and of its image's URL included, and the create's.
    about = [o for o in objects if o.get("job_id") == job["id"] or job["id"] in json.dumps(o)]
    assert len(about) >= 5  # create, stream, list, image, finished
    assert all(o.get("job_id") == job["id"] and o.get("tenant") == "default" for o in about)
    access = [o["event"] for o in about if o.get("logger") == "uvicorn.access"]
    assert any('"POST /v1/jobs HTTP/1.1" 202' in line for line in access), access
    assert any("GET /v1/artifacts/jobs/" in line for line in access), access
    assert any(o.get("logger") == "uvicorn.access" for o in objects)
    assert all({"level", "timestamp"} <= o.keys() for o in objects)
    # The empty data dir's schema made, said once in our words, not in alembic's lines.
    migrated = [o for o in objects if o["event"] == "store.migrated"]
    assert len(migrated) == 1 and migrated[0]["from_revision"] is None, migrated
    assert not [o for o in objects if o.get("logger", "").startswith("alembic")]
