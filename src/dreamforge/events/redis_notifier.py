"""The notifier over Redis pub/sub, for API and worker processes on different machines.

Events ride on one channel per job, cancel signals on one channel for all workers. Pub/sub
keeps nothing: a stream that misses a message finds the event in the database on its next
read, and a worker that misses a cancel finds the flag on its next poll.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import redis
import structlog

from dreamforge.domain.events import EventType, JobEvent
from dreamforge.events.notifier import InProcessNotifier, LocalSubscription

log = structlog.get_logger(__name__)


def _encode(events: Sequence[JobEvent]) -> str:
    return json.dumps(
        [
            {
                "job_id": e.job_id,
                "seq": e.seq,
                "type": e.type.value,
                "data": e.data,
                "created_at": e.created_at.isoformat(),
            }
            for e in events
        ]
    )


def _decode(payload: bytes) -> list[JobEvent]:
    items: list[dict[str, Any]] = json.loads(payload)
    return [
        JobEvent(
            i["job_id"],
            i["seq"],
            EventType(i["type"]),
            i["data"],
            datetime.fromisoformat(i["created_at"]),
        )
        for i in items
    ]


class RedisNotifier:
    """``follow_events``: this process serves streams (an API), so it listens to every
    job's events; a worker process only needs the cancel channel."""

    def __init__(self, url: str, namespace: str, follow_events: bool = True) -> None:
        self._follow_events = follow_events
        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self._events_prefix = f"{namespace}:events:"
        self._cancel_channel = f"{namespace}:cancel"
        self._local = InProcessNotifier()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._listen, name="dreamforge-notifier", daemon=True
        )
        self._thread.start()

    def publish(self, job_id: str, events: Sequence[JobEvent]) -> None:
        try:
            self._redis.publish(self._events_prefix + job_id, _encode(events))
        except redis.RedisError as exc:  # followers fall back to reading the log
            log.warning("notifier.publish_failed", job_id=job_id, error=str(exc))

    def subscribe(self, job_id: str) -> LocalSubscription:
        return self._local.subscribe(job_id)

    def publish_cancel(self, job_id: str) -> None:
        self._local.publish_cancel(job_id)
        try:
            self._redis.publish(self._cancel_channel, job_id)
        except redis.RedisError as exc:  # the worker's database poll still sees the flag
            log.warning("notifier.cancel_publish_failed", job_id=job_id, error=str(exc))

    def cancel_requested(self, job_id: str) -> bool:
        return self._local.cancel_requested(job_id)

    def on_cancel(self, listener: Callable[[str], None]) -> None:
        self._local.on_cancel(listener)

    def forget_cancel(self, job_id: str) -> None:
        self._local.forget_cancel(job_id)

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._redis.close()

    def _listen(self) -> None:
        """Deliver messages to this process's streams and workers; reconnect forever."""
        backoff = 0.1
        while not self._stopped.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                if self._follow_events:
                    pubsub.psubscribe(self._events_prefix + "*")
                pubsub.subscribe(self._cancel_channel)
                backoff = 0.1
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._dispatch(message)
            except redis.RedisError as exc:
                log.warning("notifier.disconnected", error=str(exc), retry_in_s=backoff)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                pubsub.close()

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"].decode()
        if channel == self._cancel_channel:
            self._local.publish_cancel(message["data"].decode())
        else:
            job_id = channel.removeprefix(self._events_prefix)
            if self._local.follows(job_id):  # most jobs have no follower here
                self._local.publish(job_id, _decode(message["data"]))
