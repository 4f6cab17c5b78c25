"""Nothing is lost when `dreamforge serve` stops, politely (SIGTERM) or not (kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, register_tiny
from tests.helpers import read_stream, submit, wait_for

pytestmark = pytest.mark.slow


class Serve:
    """`dreamforge serve` as a real child process on its own port and data dir."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            sys.executable,
            "-m",
            "dreamforge.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("serve did not become ready:\n" + self.log.read_text()[-3000:])

    def stop(self, sig: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, sig)
        self.process.wait(60)


@pytest.fixture
def serve(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Serve]:
    register_tiny(f"sqlite:///{(tmp_path / 'data' / 'dreamforge.db').resolve()}", tiny_model_dir)
    server = Serve(tmp_path / "data", tmp_path / "serve.log")
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop(signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_jobs_in_flight_finish_after_a_restart(serve: Serve, sig: signal.Signals) -> None:
    serve.start()
    with httpx.Client(base_url=serve.url, timeout=60) as client:
        running = submit(client, steps=150, seed=3)
        queued = submit(client, seed=4)
        before = read_stream(
            client, running["id"], until=lambda e: e.type == "progress" and e.data["step"] >= 5
        )
    serve.stop(sig)

    serve.start()
    with httpx.Client(base_url=serve.url, timeout=60) as client:
        after = read_stream(client, running["id"], last_event_id=before[-1].id, timeout=180)
        ids = [e.id for e in before + after]
        assert ids == list(range(1, len(ids) + 1)), "resume after restart: gap or duplicate"
        assert after[-1].type == "done" and after[-1].data["status"] == "succeeded"

        job = client.get(f"/v1/jobs/{running['id']}").json()
        assert job["status"] == "succeeded" and job["attempts"] == 2
        artifacts = client.get(job["links"]["artifacts"]).json()["data"]
        assert [a["item_index"] for a in artifacts] == [0]
        assert httpx.get(artifacts[0]["url"]).status_code == 200
        messages = [e.data["message"] for e in after if e.type == "log"]
        expected = "was lost" if sig is signal.SIGKILL else "returned to the queue"
        assert any(expected in m for m in messages), messages
        assert any("attempt 2 (retry)" in m for m in messages), messages

        assert wait_for(client, queued["id"], {"succeeded"})["attempts"] == 1
    serve.stop(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down cleanly.
    assert serve.process is not None and serve.process.returncode in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in serve.log.read_text()
