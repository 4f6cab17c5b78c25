"""deploy/k8s without a cluster: every overlay renders with `kubectl kustomize`, every
object is valid against the Kubernetes schemas (kubernetes-validate, offline), every
container runs a real `dreamforge` command with real settings, and nothing secret is in
the manifests. The images' pins agree with what the tests ran on; a GPU worker given
SIGTERM lets go of its job within the pod's grace period."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import torch
import yaml

from dreamforge.config import Settings
from tests.conftest import ApiThread, free_port, register_tiny, unavailable
from tests.helpers import read_stream, submit, wait_for
from tests.processes import Worker
from tests.test_deploy import SETTING_NAMES, assert_dreamforge_command

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ["k3s", "production", "production-replicate"]
KUBERNETES = "1.32.0"


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl (Debian: kubectl), for `kubectl kustomize`")
    rendered = subprocess.run(
        [str(kubectl), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    )
    return [o for o in yaml.safe_load_all(rendered.stdout) if o]


def pod_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o["spec"]["template"]["spec"]
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    }


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def secret_keys() -> set[str]:
    """The keys docs/deploy-k3s.md puts in the dreamforge-secrets Secret."""
    return set(re.findall(r"--from-literal=(\w+)=", (ROOT / "docs/deploy-k3s.md").read_text()))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schemas(overlay: str) -> None:
    objects = render(overlay)
    assert {o["kind"] for o in objects} >= {
        "Namespace", "ConfigMap", "PersistentVolumeClaim", "Job", "Deployment", "Service",
        "PodDisruptionBudget",
    }  # fmt: skip
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    assert not by_kind(objects, "Secret"), "secrets are created by the operator, not here"
    assert all(
        o["metadata"].get("namespace") == "dreamforge" for o in objects if o["kind"] != "Namespace"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_runs_a_real_command_with_real_settings(overlay: str) -> None:
    objects = render(overlay)
    (config,) = by_kind(objects, "ConfigMap")
    assert set(config["data"]) <= SETTING_NAMES, set(config["data"]) - SETTING_NAMES
    assert secret_keys() and secret_keys() <= SETTING_NAMES, secret_keys() - SETTING_NAMES
    secrets = {
        "DREAMFORGE_DATABASE_URL": "postgresql+psycopg://u:p@db:5432/dreamforge",
        "DREAMFORGE_BROKER_URL": "redis://redis:6379/0",
    }
    values = {**config["data"], **secrets}
    settings = Settings(**{k.removeprefix("DREAMFORGE_").lower(): v for k, v in values.items()})
    assert settings.resolved_storage_url.startswith("s3://") and not settings.create_default_model
    # Settings some tools know by their own names (REPLICATE_API_TOKEN, HF_TOKEN…).
    aliases = {
        choice.upper()
        for field in Settings.model_fields.values()
        for choice in getattr(field.validation_alias, "choices", [])
        if isinstance(choice, str)
    }
    for name, spec in pod_specs(objects).items():
        for container in spec["containers"]:
            assert_dreamforge_command(container["args"], name)
            sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
            assert sources == {"dreamforge-config", "dreamforge-secrets"}, name
            for variable in container.get("env", []):
                assert variable["name"] in SETTING_NAMES | aliases, (name, variable["name"])
                assert "value" not in variable, "secrets come from Secrets, by reference"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down_sized_and_probed(overlay: str) -> None:
    objects = render(overlay)
    specs = pod_specs(objects)
    for name, spec in specs.items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert {"requests", "limits"} <= set(container["resources"]), name
    api = specs["dreamforge-api"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["image"].startswith("dreamforge/api:")
    gpu = specs["dreamforge-gpu-worker"]
    assert gpu["runtimeClassName"] == "nvidia"
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["containers"][0]["args"][:3] == ["worker", "--queues", "gpu"]
    assert specs["dreamforge-io-worker"]["containers"][0]["args"][:3] == [
        "worker",
        "--queues",
        "io",
    ]
    for worker in ("dreamforge-gpu-worker", "dreamforge-io-worker"):
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in specs[worker]["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == ["dreamforge-models"], worker
    (budget,) = by_kind(objects, "PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/component": "api"}


def test_the_images_pin_what_the_tests_ran_on() -> None:
    locks = {
        name: dict(
            line.split("==")
            for line in (ROOT / "deploy/requirements" / f"{name}.txt").read_text().splitlines()
            if "==" in line
        )
        for name in ("api", "worker")
    }
    bootstrap = (ROOT / "scripts/bootstrap").read_text()
    pinned = dict(re.findall(r"(torch|torchvision)==([\w.]+)", bootstrap))
    assert {k: locks["worker"][k] for k in pinned} == pinned
    assert torch.__version__.split("+")[0] == locks["worker"]["torch"]  # the golden tests' torch
    assert "torch" not in locks["api"] and "diffusers" not in locks["api"]
    assert set(locks["api"].items()) <= set(locks["worker"].items())
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY deploy/requirements/api.txt" in dockerfile
    assert "COPY deploy/requirements/worker.txt" in dockerfile
    from importlib.metadata import version

    assert locks["api"]["fastapi"] == version("fastapi")


def test_a_gpu_worker_given_sigterm_lets_go_of_its_job_within_the_grace_period(
    distributed_settings: Callable[..., Settings], tiny_model_dir: Path, tmp_path: Path
) -> None:
    grace = pod_specs(render("k3s"))["dreamforge-gpu-worker"]["terminationGracePeriodSeconds"]
    settings = distributed_settings(port=free_port())
    register_tiny(settings.resolved_database_url, tiny_model_dir)
    worker = Worker(settings, tmp_path / "worker.log")
    worker.start()
    with (
        ApiThread(settings, run_worker=False) as api,
        httpx.Client(base_url=api.url, timeout=60) as client,
    ):
        job = submit(client, steps=150, seed=11)
        read_stream(client, job["id"], until=lambda e: e.data.get("step", 0) >= 2, timeout=180)
        started = time.monotonic()
        worker.signal(signal.SIGTERM, timeout=grace)
        took = time.monotonic() - started
        assert took < grace, f"the worker took {took:.1f}s to stop; the pod gets {grace}s"
        handed_back = client.get(f"/v1/jobs/{job['id']}").json()
        assert handed_back["status"] == "queued", handed_back
        successor = Worker(settings, tmp_path / "next.log")
        successor.start()
        try:
            assert wait_for(client, job["id"], {"succeeded"}, 240)["attempts"] == 2
        finally:
            successor.signal(signal.SIGTERM)
