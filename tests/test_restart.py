"""Nothing is lost when `dreamforge serve` stops, politely (SIGTERM) or not (kill -9)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import register_tiny
from tests.helpers import durable, last_id, read_stream, submit, wait_for
from tests.processes import Serve

pytestmark = pytest.mark.slow


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
        before = read_stream(client, running["id"], until=lambda e: e.data.get("step", 0) >= 5)
    serve.stop(sig)

    serve.start()
    with httpx.Client(base_url=serve.url, timeout=60) as client:
        after = read_stream(client, running["id"], last_event_id=last_id(before), timeout=180)
        ids = [e.id for e in durable(before + after)]
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
