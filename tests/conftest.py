"""Shared fixtures: a tiny model built once, databases, and a live embedded server."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text

from dreamforge.api.app import create_app
from dreamforge.config import Settings
from dreamforge.models.registry import TINY_DEFAULTS, ModelRegistry
from dreamforge.models.tiny import write_tiny_sdxl
from dreamforge.runtime import Runtime
from dreamforge.store.db import Database
from dreamforge.store.models import ModelRepository

POSTGRES_ADMIN_URL = os.environ.get(
    "DREAMFORGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
IN_CI = bool(os.environ.get("CI"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def unavailable(reason: str) -> None:
    """Skip where a service is missing on a developer's machine; fail in CI."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sdxl(tmp_path_factory.mktemp("models") / "tiny-sdxl")


def register_tiny(database_url: str, model_dir: Path, model_id: str = "tiny-sdxl") -> None:
    db = Database(database_url)
    db.upgrade()
    ModelRegistry(ModelRepository(db)).register_local(
        model_id, model_dir, source="builtin:tiny-sdxl", defaults=TINY_DEFAULTS
    )
    db.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database for this test session."""
    name = f"dreamforge_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        unavailable(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {exc}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


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


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own
        pass


def start_live_server(settings: Settings) -> tuple[_ThreadedServer, threading.Thread, Runtime]:
    runtime = Runtime.build(settings)
    runtime.prepare()
    server = _ThreadedServer(
        uvicorn.Config(
            create_app(runtime, run_worker=True),
            host="127.0.0.1",
            port=settings.port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    return server, thread, runtime


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    """Dream Forge's embedded profile, serving on a real port from this process."""
    data_dir = tmp_path_factory.mktemp("data")
    settings = Settings(
        data_dir=data_dir, port=free_port(), max_width=512, max_height=512, sse_ping_s=1.0
    )
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    server, thread, runtime = start_live_server(settings)
    url = f"http://127.0.0.1:{settings.port}"
    with httpx.Client(base_url=url, timeout=60) as client:
        yield LiveServer(url, runtime, client)
    server.should_exit = True
    thread.join(30)
