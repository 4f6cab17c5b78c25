"""Events on the wire: SSE frames and NDJSON lines, encoded in one pass.

A stream sends what is at hand as one chunk: on a busy job that is one write per wake-up
instead of one per event, and the JSON comes from pydantic's encoder (Rust), not the
standard library's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic_core import to_json

from dreamforge.domain.events import JobEvent


def event_json(event: JobEvent) -> bytes:
    """The event's JSON object: its payload with ``seq`` (durable events), ``type``, ``ts``."""
    head: dict[str, Any] = {} if event.seq is None else {"seq": event.seq}
    return to_json({**head, "type": event.type.value, "ts": event.created_at, **event.data})


def sse_frames(events: Iterable[JobEvent]) -> bytes:
    """SSE frames; live progress has no ``id:``, so a client's Last-Event-ID stays put."""
    frames = []
    for event in events:
        id_line = b"" if event.seq is None else b"id: %d\n" % event.seq
        frames.append(
            b"%sevent: %s\ndata: %s\n\n" % (id_line, event.type.value.encode(), event_json(event))
        )
    return b"".join(frames)


def ndjson_lines(events: Iterable[JobEvent]) -> bytes:
    return b"".join(event_json(e) + b"\n" for e in events)
