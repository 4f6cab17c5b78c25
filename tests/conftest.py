"""Shared fixtures: a tiny model built once, databases, and a live embedded server."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import safetensors.torch
import torch
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from dreamforge.api.app import create_app
from dreamforge.config import Settings
from dreamforge.models.registry import TINY_DEFAULTS, ModelRegistry
from dreamforge.models.tiny import write_tiny_sdxl, write_tiny_sdxl_single_file, write_tiny_upscaler
from dreamforge.runners.protocol import Runner
from dreamforge.runtime import Runtime
from dreamforge.store.db import Database
from dreamforge.store.models import ModelRepository
from tests.processes import Worker
from tests.services import SeaweedFS, free_port

POSTGRES_ADMIN_URL = os.environ.get(
    "DREAMFORGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("DREAMFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = bool(os.environ.get("CI"))

__all__ = ["free_port"]


def unavailable(reason: str) -> None:
    """Skip where a service is missing on a developer's machine; fail in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_single_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny SDXL as one original-layout checkpoint, as CivitAI ships models."""
    return write_tiny_sdxl_single_file(tmp_path_factory.mktemp("models") / "tiny-sdxl.safetensors")


@pytest.fixture(scope="session")
def sdxl_checkpoint(tiny_single_file: Path) -> Callable[..., bytes]:
    """The tiny single file's bytes; given names, with a one-value tensor added under each,
    so that two versions of a checkpoint differ."""

    def make(*extra: str) -> bytes:
        if not extra:
            return tiny_single_file.read_bytes()
        tensors = safetensors.torch.load_file(tiny_single_file)
        tensors.update({name: torch.zeros(1) for name in extra})
        return safetensors.torch.save(tensors)

    return make


@pytest.fixture(scope="session")
def tiny_upscaler(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_upscaler(tmp_path_factory.mktemp("upscalers") / "tiny-esrgan.safetensors")


def register_tiny(database_url: str, model_dir: Path, model_id: str = "tiny-sdxl") -> None:
    db = Database(database_url)
    db.upgrade()
    ModelRegistry(ModelRepository(db)).register_local(
        model_id, model_dir, source="builtin:tiny-sdxl", defaults=TINY_DEFAULTS
    )
    db.dispose()


@pytest.fixture(scope="session")
def new_postgres_database() -> Iterator[Callable[[], str]]:
    """Makes fresh, uniquely named PostgreSQL databases, dropped at the end of the session."""
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text("SELECT 1"))
    except OperationalError as exc:
        admin.dispose()
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    created: list[str] = []

    def create() -> str:
        name = f"dreamforge_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        created.append(name)
        return POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    with admin.connect() as connection:
        for name in created:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def postgres_url(new_postgres_database: Callable[[], str]) -> str:
    return new_postgres_database()


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        unavailable(f"Redis is not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """A real S3 server for the session."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except (OSError, TimeoutError) as exc:
        unavailable(f"SeaweedFS could not start: {exc}")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def distributed_settings(
    new_postgres_database: Callable[[], str],
    redis_url: str,
    seaweedfs: SeaweedFS,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Settings]:
    """Settings for the distributed profile, with a database, Redis namespace and key
    prefix of their own, so that runs never collide (the bucket is the session's: each
    bucket costs SeaweedFS a set of volumes)."""
    bucket = f"dreamforge-test-{uuid.uuid4().hex[:8]}"

    def make(**overrides: object) -> Settings:
        run = uuid.uuid4().hex[:10]
        values: dict[str, object] = {
            "data_dir": tmp_path_factory.mktemp("distributed"),
            "database_url": new_postgres_database(),
            "broker_url": redis_url,
            "redis_namespace": f"dreamforge-test-{run}",
            "storage_url": f"s3://{bucket}/{run}",
            "s3_endpoint_url": seaweedfs.endpoint,
            "s3_access_key_id": SeaweedFS.ACCESS_KEY,
            "s3_secret_access_key": SeaweedFS.SECRET_KEY,
            "signing_key": "test-signing-key",
            **overrides,
        }
        return Settings(**values)  # type: ignore[arg-type]

    return make


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'test.db'}")
    else:
        url = request.getfixturevalue("postgres_url")
        db = Database(url)
        with db.engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db.upgrade()
    yield db
    db.dispose()


@dataclass
class LiveServer:
    url: str
    runtime: Runtime
    client: httpx.Client
    profile: str
    workers: list[Worker] = field(default_factory=list)


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own
        pass


class ApiThread:
    """The API on a real port, served from a thread of the test process."""

    def __init__(self, settings: Settings, run_worker: bool, runner: Runner | None = None) -> None:
        self.runtime = Runtime.build(settings)
        self.runtime.prepare()
        config = uvicorn.Config(
            create_app(self.runtime, run_worker=run_worker, runner=runner),
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
        )
        self.server = _ThreadedServer(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.port}"

    def __enter__(self) -> ApiThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


LIMITS = {"max_width": 512, "max_height": 512, "sse_ping_s": 1.0}


@pytest.fixture(scope="session", params=["embedded", "distributed"])
def live(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    tiny_model_dir: Path,
) -> Iterator[LiveServer]:
    """Dream Forge on a real port, in each profile: the embedded one all in this process;
    the distributed one as an API here and a `dreamforge worker` process, on PostgreSQL,
    Redis and SeaweedFS."""
    if request.param == "embedded":
        settings = Settings(data_dir=tmp_path_factory.mktemp("data"), port=free_port(), **LIMITS)  # type: ignore[arg-type]
    else:
        make = request.getfixturevalue("distributed_settings")
        settings = make(port=free_port(), **LIMITS)
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    workers = []
    if request.param == "distributed":
        log = tmp_path_factory.mktemp("logs") / "worker.log"
        workers.append(Worker(settings, log))
        workers[0].start()
    with (
        ApiThread(settings, run_worker=request.param == "embedded") as api,
        httpx.Client(base_url=api.url, timeout=60) as client,
    ):
        yield LiveServer(api.url, api.runtime, client, request.param, workers)
    for worker in workers:
        if worker.alive():
            worker.signal(signal.SIGTERM)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A run that skipped a profile must not look green at a glance: say so loudly."""
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons: dict[str, int] = {}
    for report in skipped:
        reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else "skipped"
        reasons[reason] = reasons.get(reason, 0) + 1
    terminalreporter.section("NOT TESTED", sep="!", red=True, bold=True)
    for reason, count in sorted(reasons.items(), key=lambda item: -item[1]):
        terminalreporter.write_line(f"{count} test(s) did not run: {reason}", red=True, bold=True)
