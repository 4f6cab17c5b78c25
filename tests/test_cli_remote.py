"""`dreamforge generate` and `dreamforge jobs …` against a running server, as a user runs
them: in a process of their own, pointed at it by --url or DREAMFORGE_URL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from dreamforge import cli_remote
from dreamforge.artifacts.receipts import read_receipt
from dreamforge.cli import app
from dreamforge.runners.fake import FakeRunner
from tests.conftest import free_port
from tests.helpers import submit, wait_for
from tests.test_lifecycle import PLANS, FakeServer, serving_fake

CLI = [sys.executable, "-m", "dreamforge.cli"]


def dreamforge(*args: str, url: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DREAMFORGE_URL": url, "COLUMNS": "120"}
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[FakeServer]:
    """The embedded profile on the fake runner, 10 ms a step, with the default time limit:
    the jobs canceled here run for seconds, and under test_lifecycle's 2 s limit a cancel
    had to land within 2 s of the job's start or the job timed out instead."""
    with serving_fake(
        tmp_path_factory.mktemp("cli"), tiny_model_dir, FakeRunner(step_s=0.01, plans=PLANS)
    ) as server:
        yield server


def test_generate_saves_each_image_with_its_receipt(fake: FakeServer, tmp_path: Path) -> None:
    url = str(fake.client.base_url)
    out = tmp_path / "images"
    done = dreamforge(
        "generate", "a fox", "--count", "3", "--size", "64x64", "--steps", "3",
        "--seed", "11", "--out", str(out), url=url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "64x64, 3 steps" in done.stdout and done.stdout.count("saved ") == 3
    saved = sorted(out.glob("*.png"))
    assert [read_receipt(p.read_bytes()).seed for p in saved] == [11, 12, 13]
    assert all(str(p) in done.stdout for p in saved)


def test_generate_says_what_is_wrong_and_where(fake: FakeServer, tmp_path: Path) -> None:
    refused = dreamforge(
        "generate", "too big", "--size", "4096x4096", url=str(fake.client.base_url)
    )
    assert (
        refused.returncode == 1
        and "width" in refused.stderr
        and "VALIDATION_ERROR" in refused.stderr
    )
    bad_size = dreamforge("generate", "odd", "--size", "big", url=str(fake.client.base_url))
    assert bad_size.returncode == 2 and "WIDTHxHEIGHT" in bad_size.stderr
    nowhere = f"http://127.0.0.1:{free_port()}"
    missing = dreamforge("generate", "anyone?", url=nowhere)
    assert missing.returncode == 1 and f"no Dream Forge answering at {nowhere}" in missing.stderr


def test_ctrl_c_cancels_the_job(fake: FakeServer, tmp_path: Path) -> None:
    url = str(fake.client.base_url)
    before = {j["id"] for j in fake.client.get("/v1/jobs?limit=100").json()["data"]}
    # As from a terminal: a command started by a background job (as CI may be) inherits
    # SIGINT ignored, and would never see the Ctrl-C. A signal handled here is reset to its
    # default in the child.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen(
            [*CLI, "generate", "slow", "--count", "2", "--steps", "150", "--out", str(tmp_path)],
            env={**os.environ, "DREAMFORGE_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        signal.signal(signal.SIGINT, inherited)
    deadline = time.monotonic() + 60
    while True:
        running = [
            j for j in fake.client.get("/v1/jobs?status=running").json()["data"]
            if j["id"] not in before
        ]  # fmt: skip
        if running:
            break
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    job = wait_for(fake.client, running[0]["id"], {"canceled"}, timeout=30)
    assert f"canceled job {job['id']}" in stderr
    assert not list(tmp_path.glob("*.png"))


def test_jobs_list_show_logs_and_cancel(
    fake: FakeServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = str(fake.client.base_url)
    runner = CliRunner()
    env = {"DREAMFORGE_URL": url}
    # An 80-column terminal: the ids a user copies into the next command stay whole.
    monkeypatch.setattr(cli_remote, "console", Console(width=80))
    job = submit(fake.client, prompt="listed", steps=2)
    followed = runner.invoke(app, ["jobs", "logs", job["id"], "--follow"], env=env)
    assert followed.exit_code == 0, followed.output
    assert "accepted" in followed.output and "finished in" in followed.output

    listed = runner.invoke(
        app, ["jobs", "list", "--status", "succeeded", "--limit", "100"], env=env
    )
    assert listed.exit_code == 0 and job["id"] in listed.output and "succeeded" in listed.output
    shown = runner.invoke(app, ["jobs", "show", job["id"]], env=env)
    assert shown.exit_code == 0 and '"status": "succeeded"' in shown.output
    tail = runner.invoke(app, ["jobs", "logs", job["id"], "--tail", "1"], env=env)
    assert tail.output.count("\n") == 1 and "finished in" in tail.output

    slow = submit(fake.client, prompt="to cancel", steps=150, count=2)
    wait_for(fake.client, slow["id"], {"running"})
    canceled = runner.invoke(app, ["jobs", "cancel", slow["id"]], env=env)
    assert canceled.exit_code == 0 and slow["id"] in canceled.output
    assert wait_for(fake.client, slow["id"], {"canceled"})["status"] == "canceled"
    again = runner.invoke(app, ["jobs", "cancel", slow["id"]], env=env)
    assert again.exit_code == 0  # canceling a canceled job is a no-op, as in the API
    missing = runner.invoke(app, ["jobs", "show", "no-such-job"], env=env)
    assert missing.exit_code == 1 and "NOT_FOUND" in missing.output
