"""deploy/compose.yaml and the Dockerfile: no Docker engine runs here, so check that every
service's command is a real `dreamforge` command and every setting a real setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from dreamforge.cli import app
from dreamforge.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
DREAMFORGE_SERVICES = {name: s for name, s in SERVICES.items() if "build" in s}
SETTING_NAMES = {f"DREAMFORGE_{name.upper()}" for name in Settings.model_fields}


def test_the_stack_has_every_part() -> None:
    assert {"api", "worker", "redis", "postgres", "minio", "migrate"} <= set(SERVICES)
    assert set(DREAMFORGE_SERVICES) >= {"api", "worker", "migrate"}


def assert_dreamforge_command(args: list[str], where: str) -> None:
    """``args`` parse as a `dreamforge` command line: the command exists, and its options
    and values are its own."""
    group: Any = typer.main.get_command(app)
    context = group.make_context("dreamforge", list(args))
    command = group.get_command(context, args[0])
    assert command is not None, f"{where}: no command {args[0]!r}"
    rest = list(args[1:])
    if hasattr(command, "get_command"):  # a command group, e.g. `db upgrade`
        command = command.get_command(context, rest.pop(0))
        assert command is not None, f"{where}: {args}"
    command.make_context(args[0], rest)  # raises on an unknown option or a bad value


@pytest.mark.parametrize("name", sorted(DREAMFORGE_SERVICES))
def test_each_command_parses_as_a_dreamforge_command(name: str) -> None:
    assert_dreamforge_command(DREAMFORGE_SERVICES[name]["command"], name)


@pytest.mark.parametrize("name", sorted(DREAMFORGE_SERVICES))
def test_each_setting_is_a_real_setting_and_valid(name: str) -> None:
    environment: dict[str, str] = DREAMFORGE_SERVICES[name]["environment"]
    unknown = {key for key in environment if key not in SETTING_NAMES}
    assert not unknown, f"{name}: not settings: {unknown}"
    settings = Settings(
        **{k.removeprefix("DREAMFORGE_").lower(): v for k, v in environment.items()}
    )
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert settings.broker_url.startswith("redis://")
    assert settings.resolved_storage_url.startswith("s3://")


def test_long_running_services_have_health_checks_and_migration_runs_first() -> None:
    for name, service in SERVICES.items():
        if name != "migrate":
            assert "healthcheck" in service, name
    assert SERVICES["migrate"]["restart"] == "no"
    for name in ("api", "worker", "worker-io"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name


def test_the_gpu_worker_reserves_an_nvidia_device() -> None:
    devices = SERVICES["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert SERVICES["worker"]["command"][:3] == ["worker", "--queues", "gpu"]


def test_the_dockerfile_installs_the_package_and_runs_the_cli() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("RUN pip install --no-deps .") == 2  # the api and worker images
    assert 'ENTRYPOINT ["dreamforge"]' in dockerfile
    assert dockerfile.count("USER dreamforge") == 2  # not root
