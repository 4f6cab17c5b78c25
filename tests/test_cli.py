"""The command line: migrations, the tiny model, and serve on an empty data dir."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest
from sqlalchemy import inspect
from typer.testing import CliRunner

from dreamforge.cli import app
from dreamforge.config import Settings
from dreamforge.store.db import Database
from tests.helpers import read_stream, submit
from tests.processes import Serve

runner = CliRunner()


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    result = runner.invoke(app, ["db", "upgrade", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    db = Database(Settings(data_dir=tmp_path).resolved_database_url)
    tables = set(inspect(db.engine).get_table_names())
    assert {"jobs", "job_events", "artifacts", "models", "alembic_version"} <= tables


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
    finally:
        server.stop(signal.SIGTERM)
