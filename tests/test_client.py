"""The Python client against a real server: typed jobs and events, resume after a dropped
connection, images saved with their receipts, problems raised as ``ApiError``; and the
quickstart in the docs, run as a user would."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dreamforge.artifacts.receipts import read_receipt
from dreamforge.client import ApiError, AsyncClient, Client, EventType, JobRequest, JobStatus
from dreamforge.domain.events import ArtifactData, DoneData, ProgressData
from tests.conftest import LiveServer
from tests.test_lifecycle import FakeServer, fake  # noqa: F401 - the fixture

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def forge(fake: FakeServer) -> Iterator[Client]:  # noqa: F811
    with Client(str(fake.client.base_url)) as client:
        yield client


def test_submit_follow_and_save_with_typed_events(forge: Client, tmp_path: Path) -> None:
    job = forge.submit(prompt="client", count=3, steps=2, seed=40)
    assert job.status is JobStatus.QUEUED and job.spec.item_seeds == (40, 41, 42)
    events = list(forge.events(job.id))
    assert events[0].type is EventType.STATUS and events[-1].type is EventType.DONE
    done = events[-1].data
    assert isinstance(done, DoneData) and done.status is JobStatus.SUCCEEDED
    stored = [e.data for e in events if isinstance(e.data, ArtifactData)]
    assert sorted(a.seed for a in stored) == [40, 41, 42]
    live = [e for e in events if isinstance(e.data, ProgressData)]
    assert live and all(e.seq is None for e in live)
    durable = [e.seq for e in events if e.seq is not None]
    assert durable == list(range(1, len(durable) + 1))

    assert forge.wait(job.id).status is JobStatus.SUCCEEDED  # an ended job: at once
    paths = forge.save(job.id, tmp_path / "out")
    by_sha = {a.sha256: a for a in stored}
    assert len(paths) == 3
    for path in paths:
        data = path.read_bytes()
        artifact = by_sha[hashlib.sha256(data).hexdigest()]
        assert read_receipt(data).seed == artifact.seed

    # Resume: after a Last-Event-ID, exactly the durable events that followed it.
    middle = durable[len(durable) // 2]
    rest = [e.seq for e in forge.events(job.id, last_event_id=middle) if e.seq is not None]
    assert rest == durable[durable.index(middle) + 1 :]

    (last,) = forge.logs(job.id, tail=1)
    assert last.type is EventType.LOG and "finished in" in str(last.data)
    assert job.id in [j.id for j in forge.jobs(status=JobStatus.SUCCEEDED, limit=100).data]
    assert "tiny-sdxl" in [m.id for m in forge.models().data]


def test_a_refused_request_raises_the_servers_problem(forge: Client) -> None:
    with pytest.raises(ApiError) as refused:
        forge.submit(JobRequest(prompt="too wide", width=4096))
    assert refused.value.status == 422 and refused.value.code == "VALIDATION_ERROR"
    assert refused.value.errors[0]["field"] == "width" and "width" in str(refused.value)
    done = forge.wait(forge.submit(prompt="ends first").id)
    with pytest.raises(ApiError) as conflict:
        forge.cancel(done.id)
    assert conflict.value.status == 409 and conflict.value.code == "CONFLICT"
    with pytest.raises(ApiError) as missing:
        list(forge.events("no-such-job"))
    assert missing.value.status == 404


class DropsTheFirstStream(httpx.HTTPTransport):
    """The network failing once: the first event stream breaks after its first chunk."""

    def __init__(self) -> None:
        super().__init__()
        self.streams = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if not request.url.path.endswith("/progress/stream"):
            return response
        self.streams += 1
        if self.streams > 1:
            return response
        upstream = response.stream

        class Broken(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in upstream:  # type: ignore[union-attr]
                    yield chunk
                    raise httpx.ReadError("connection reset")

            def close(self) -> None:
                upstream.close()  # type: ignore[union-attr]

        return httpx.Response(response.status_code, headers=response.headers, stream=Broken())


def test_a_dropped_stream_is_joined_again_without_losing_or_repeating_an_event(
    fake: FakeServer,  # noqa: F811
) -> None:
    transport = DropsTheFirstStream()
    http = httpx.Client(base_url=str(fake.client.base_url), transport=transport, timeout=30)
    with Client(http=http) as forge:
        job = forge.submit(prompt="dropped", count=2, steps=3)
        seqs = [e.seq for e in forge.events(job.id) if e.seq is not None]
    assert transport.streams == 2
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) >= 6


def test_the_async_client_does_the_same(fake: FakeServer, tmp_path: Path) -> None:  # noqa: F811
    async def scenario() -> tuple[list[EventType], JobStatus, list[Path]]:
        async with AsyncClient(str(fake.client.base_url)) as forge:
            job = await forge.submit(prompt="async", count=2, steps=2)
            kinds = [event.type async for event in forge.events(job.id)]
            ended = await forge.wait(job.id)
            return kinds, ended.status, await forge.save(job.id, tmp_path)

    kinds, status, paths = asyncio.run(scenario())
    assert kinds[-1] is EventType.DONE and kinds.count(EventType.ARTIFACT) == 2
    assert status is JobStatus.SUCCEEDED and len(paths) == 2


def test_the_quickstart_in_the_docs_runs(live: LiveServer, tmp_path: Path) -> None:
    """As a user runs it: its own process, pointed at the server by DREAMFORGE_URL (in the
    distributed profile its images come from S3 by their signed URLs)."""
    env = {**os.environ, "DREAMFORGE_URL": live.url}
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(ROOT / "docs/examples/quickstart.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "done: succeeded" in done.stdout
    saved = sorted(out.glob("*.png"))
    assert [p.name for p in saved] == ["00-generate-000.png", "00-generate-001.png"]
    assert [read_receipt(p.read_bytes()).seed for p in saved] == [7, 8]
