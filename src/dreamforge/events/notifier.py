"""The notifier port and its in-process adapter.

A notifier tells streams "job X has these new events" and workers "job X should stop".
The database stays the source of truth: events it carries are a fast path that a stream
checks for gaps against the log, and a missed signal costs a read, never an event or a
cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from dreamforge.domain.events import JobEvent

log = structlog.get_logger(__name__)


class Subscription(Protocol):
    async def wait(self, timeout: float) -> list[JobEvent]:
        """Events published since the last call, waiting up to ``timeout`` seconds for
        some; an empty list means "nothing arrived: look in the log"."""
        ...

    def close(self) -> None: ...


class Notifier(Protocol):
    def publish(self, job_id: str, events: Sequence[JobEvent]) -> None: ...

    def subscribe(self, job_id: str) -> Subscription:
        """Must be called from the event loop that will wait on the subscription."""
        ...

    def publish_cancel(self, job_id: str) -> None: ...

    def cancel_requested(self, job_id: str) -> bool:
        """Cheap and local: whether a cancel signal for the job has reached this process."""
        ...

    def on_cancel(self, listener: Callable[[str], None]) -> None:
        """Call ``listener`` with the job id of each cancel signal that reaches this
        process, on the thread that brings it: a worker wakes its runner with it."""
        ...

    def forget_cancel(self, job_id: str) -> None: ...


class LocalSubscription:
    """Buffers events handed over from any thread until its stream asks for them."""

    def __init__(self, on_close: Callable[[LocalSubscription], None], job_id: str) -> None:
        self._on_close = on_close
        self.job_id = job_id
        self.loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self._pending: list[JobEvent] = []

    def deliver(self, events: Sequence[JobEvent]) -> None:
        """Thread-safe: queue events for the stream and wake it."""
        self.loop.call_soon_threadsafe(self._take, list(events))

    def _take(self, events: list[JobEvent]) -> None:
        self._pending.extend(events)
        self._arrived.set()

    async def wait(self, timeout: float) -> list[JobEvent]:
        if not self._pending:
            # asyncio.timeout, unlike wait_for, starts no task: this runs once an event.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
        self._arrived.clear()
        events, self._pending = self._pending, []
        return events

    def close(self) -> None:
        self._on_close(self)


class SubscriberSet:
    """Thread-safe fan-out of events to the subscriptions of each job in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, set[LocalSubscription]] = defaultdict(set)

    def add(self, job_id: str) -> LocalSubscription:
        subscription = LocalSubscription(self.remove, job_id)
        with self._lock:
            self._subscriptions[job_id].add(subscription)
        return subscription

    def remove(self, subscription: LocalSubscription) -> None:
        with self._lock:
            subscribers = self._subscriptions.get(subscription.job_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscriptions[subscription.job_id]

    def wants(self, job_id: str) -> bool:
        """Whether any stream in this process follows the job (a lock-free peek)."""
        return job_id in self._subscriptions

    def deliver(self, job_id: str, events: Sequence[JobEvent]) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions.get(job_id, ()))
        for subscription in subscriptions:
            try:
                subscription.deliver(events)
            except RuntimeError:  # the stream's loop has closed
                self.remove(subscription)


class InProcessNotifier:
    """The embedded profile's notifier: API and worker share one process. Other notifiers
    use one for what they deliver within their own process."""

    def __init__(self) -> None:
        self._subscribers = SubscriberSet()
        self._canceled: set[str] = set()
        self._cancel_listeners: list[Callable[[str], None]] = []

    def subscribe(self, job_id: str) -> LocalSubscription:
        return self._subscribers.add(job_id)

    def publish(self, job_id: str, events: Sequence[JobEvent]) -> None:
        self._subscribers.deliver(job_id, events)

    def follows(self, job_id: str) -> bool:
        return self._subscribers.wants(job_id)

    def publish_cancel(self, job_id: str) -> None:
        self._canceled.add(job_id)
        for listener in self._cancel_listeners:
            try:
                listener(job_id)
            except Exception:  # the flag is set: the worker's next tick sees it anyway
                log.warning("notifier.cancel_listener_failed", job_id=job_id, exc_info=True)

    def on_cancel(self, listener: Callable[[str], None]) -> None:
        self._cancel_listeners.append(listener)

    def cancel_requested(self, job_id: str) -> bool:
        return job_id in self._canceled

    def forget_cancel(self, job_id: str) -> None:
        self._canceled.discard(job_id)
