"""Small client-side helpers the tests share: following SSE, waiting for jobs."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from httpx_sse import connect_sse
from PIL import Image

from dreamforge.domain.jobs import JobSpec
from dreamforge.runners.protocol import ModelRef


@dataclass(frozen=True)
class Event:
    id: int | None  # None on live-only progress events
    type: str
    data: dict[str, Any]


def durable(events: list[Event]) -> list[Event]:
    """The events a stream replays: all but live progress."""
    return [e for e in events if e.id is not None]


def last_id(events: list[Event]) -> int:
    """What an EventSource sends as Last-Event-ID after these events."""
    return durable(events)[-1].id or 0


def read_stream(
    client: httpx.Client,
    job_id: str,
    last_event_id: int | None = None,
    limit: int | None = None,
    until: Callable[[Event], bool] | None = None,
    timeout: float = 120,
) -> list[Event]:
    """Events from the job's SSE stream, until it closes, ``limit`` are read, or one
    matches ``until``."""
    headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
    events: list[Event] = []
    # Heartbeats reset the read timeout, so a stream that never ends would never time
    # out: the whole read has a deadline of its own.
    deadline = time.monotonic() + timeout
    with connect_sse(
        client, "GET", f"/v1/jobs/{job_id}/progress/stream", headers=headers, timeout=timeout
    ) as source:
        for sse in source.iter_sse():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the stream of job {job_id} went on past {timeout}s; last events: "
                    f"{events[-3:]}"
                )
            if not sse.data:
                # httpx-sse dispatches heartbeat comments as empty events; the spec says
                # an empty data buffer dispatches nothing.
                continue
            data = json.loads(sse.data)
            # A live progress event has no id: line, so the client's last id stays as it
            # was (httpx-sse reports that one); its data has no seq.
            seq = data.get("seq")
            assert seq is None or sse.id == str(seq), (sse.id, data)
            events.append(Event(seq, sse.event, data))
            if limit is not None and len(events) >= limit:
                break
            if until is not None and until(events[-1]):
                break
    return events


def submit(client: httpx.Client, **spec: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"prompt": "a red fox in snow", **spec})
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_for(
    client: httpx.Client, job_id: str, statuses: set[str], timeout: float = 120
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stayed {job['status']}, wanted {statuses}")
        time.sleep(0.05)


def run_to_end(client: httpx.Client, **spec: Any) -> tuple[dict[str, Any], list[Event]]:
    job = submit(client, **spec)
    events = read_stream(client, job["id"])
    return client.get(f"/v1/jobs/{job['id']}").json(), events


def cancel_while_following(client: httpx.Client, job: dict[str, Any]) -> tuple[int, list[Event]]:
    """Follow the job's stream, cancel it at the first denoising step seen, and read on
    to the end; the step at which the cancel was sent, and every event."""
    sent_at: list[int] = []

    def cancel_once(event: Event) -> bool:
        if "step" in event.data and not sent_at:
            assert client.post(job["links"]["cancel"]).status_code == 202
            sent_at.append(event.data["step"])
        return False

    events = read_stream(client, job["id"], until=cancel_once)
    assert sent_at, "no denoising step was seen"
    return sent_at[0], events


def tiny_spec(**fields: Any) -> JobSpec:
    """A resolved spec for the tiny model, small and quick; ``fields`` override it."""
    values: dict[str, Any] = {
        "prompt": "a red fox",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 2,
        "guidance_scale": 5.0,
        "scheduler": "euler",
        "seed": 5,
        "model_id": "tiny",
    }
    return JobSpec(**{**values, **fields})


def tiny_model_ref(path: Path) -> ModelRef:
    """The tiny model in ``path`` as a runner is handed it (id ``tiny``, as ``tiny_spec``
    names it)."""
    return ModelRef("tiny", str(path), "diffusers", "0" * 64, "test")


GOLDEN_DIR = Path(__file__).parent / "golden"


def assert_matches_golden(png: bytes, name: str, max_levels: int = 2) -> None:
    """The image's pixels are the golden image's, to within ``max_levels`` of 255 each.

    Not bit for bit: CPUs with and without AVX-512 sum in different orders, which moves
    a few pixels by a level. Any real change (another seed, sampler, model or a bug) moves
    them by tens. ``DREAMFORGE_WRITE_GOLDEN=1`` writes the golden image instead, for a
    deliberate change, to be committed with a word on why.
    """
    path = GOLDEN_DIR / f"{name}.png"
    got = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    if os.environ.get("DREAMFORGE_WRITE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(got.astype(np.uint8), "RGB").save(path)
    want = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    assert got.shape == want.shape
    difference = np.abs(got - want)
    assert difference.max() <= max_levels, f"{name}: off by up to {difference.max()} levels"
    assert difference.mean() < 0.05, f"{name}: {difference.mean():.3f} levels off on average"
