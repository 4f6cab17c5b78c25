"""Canceling jobs, and resuming SSE streams without a gap or a duplicate."""

from __future__ import annotations

from tests.conftest import LiveServer
from tests.helpers import (
    cancel_while_following,
    durable,
    last_id,
    read_stream,
    submit,
    wait_for,
)

LONG = {"steps": 150}  # ~5 s on a CPU with the tiny model: time to act while it runs


def test_a_queued_job_is_canceled_at_once_and_never_runs(live: LiveServer) -> None:
    running = submit(live.client, **LONG)
    queued = submit(live.client)
    response = live.client.post(queued["links"]["cancel"])
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    live.client.post(running["links"]["cancel"])
    wait_for(live.client, running["id"], {"canceled"})

    job = live.client.get(queued["links"]["self"]).json()
    assert job["status"] == "canceled" and job["started_at"] is None and job["attempts"] == 0
    assert live.client.get(queued["links"]["artifacts"]).json()["data"] == []
    events = read_stream(live.client, queued["id"])
    assert events[-1].type == "done" and events[-1].data["status"] == "canceled"
    assert "running" not in [e.data.get("status") for e in events]


def test_a_running_job_stops_within_one_step(live: LiveServer) -> None:
    # 256px steps (0.1-0.2 s here, about an SDXL step on a GPU) outlast the cancel's trip
    # from the client through the API (and Redis) to the worker.
    job = submit(live.client, **LONG, width=256, height=256)
    sent_at, events = cancel_while_following(live.client, job)
    done = wait_for(live.client, job["id"], {"canceled"}, timeout=30)
    assert done["error"] is None and done["finished_at"]

    steps = [e.data["step"] for e in events if "step" in e.data]
    # The step under way when the cancel lands finishes, and the client saw the step
    # before it sent the cancel. The fake runner's test pins exactly one step.
    assert steps[-1] - sent_at <= 2, (sent_at, steps)
    assert events[-1].type == "done" and events[-1].data["status"] == "canceled"
    assert live.client.get(job["links"]["artifacts"]).json()["data"] == []


def test_canceling_twice_is_harmless_and_a_finished_job_cannot_be(live: LiveServer) -> None:
    job = submit(live.client)
    wait_for(live.client, job["id"], {"succeeded"})
    conflict = live.client.post(job["links"]["cancel"])
    assert conflict.status_code == 409 and conflict.json()["code"] == "CONFLICT"

    blocker = submit(live.client, **LONG)
    queued = submit(live.client)
    assert live.client.post(queued["links"]["cancel"]).status_code == 200
    again = live.client.post(queued["links"]["cancel"])
    assert again.status_code == 200 and again.json()["status"] == "canceled"
    live.client.post(blocker["links"]["cancel"])
    wait_for(live.client, blocker["id"], {"canceled"})


def test_resuming_a_live_stream_misses_nothing_and_repeats_nothing(live: LiveServer) -> None:
    job = submit(live.client, steps=40)
    head = read_stream(live.client, job["id"], until=lambda e: e.data.get("step", 0) >= 3)
    rest = read_stream(live.client, job["id"], last_event_id=last_id(head))
    ids = [e.id for e in durable(head + rest)]
    assert ids == list(range(1, len(ids) + 1))
    assert rest[-1].type == "done"
    # Progress is live only: steps during the reconnect are not replayed, the rest arrive.
    steps = [e.data["step"] for e in head + rest if "step" in e.data]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_resuming_after_the_end_replays_exactly_the_missed_tail(live: LiveServer) -> None:
    job = submit(live.client)
    full = durable(read_stream(live.client, job["id"]))
    for cut in (0, 1, len(full) // 2, len(full) - 1):
        assert read_stream(live.client, job["id"], last_event_id=cut) == full[cut:]
    # What a browser's EventSource does after done: reconnect with the last id. Nothing
    # is left to send, so the stream closes at once instead of hanging.
    assert read_stream(live.client, job["id"], last_event_id=full[-1].id, timeout=10) == []
    with live.client.stream(
        "GET", job["links"]["stream"], params={"after": full[-2].id}
    ) as response:
        body = response.read().decode()
    assert f"id: {full[-1].id}" in body and f"id: {full[-2].id}\n" not in body


def test_an_idle_stream_gets_heartbeat_comments(live: LiveServer) -> None:
    blocker = submit(live.client, **LONG)
    waiting = submit(live.client)
    lines: list[str] = []
    with live.client.stream("GET", waiting["links"]["stream"], timeout=30) as response:
        for line in response.iter_lines():
            lines.append(line)
            if line.startswith(":"):
                break
    assert any(line.startswith(": ping") for line in lines)
    live.client.post(blocker["links"]["cancel"])
    live.client.post(waiting["links"]["cancel"])
    wait_for(live.client, blocker["id"], {"canceled"})
