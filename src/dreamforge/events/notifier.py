"""The notifier port and its in-process adapter.

A notifier carries no data, only "job X has new events": the database holds the events,
so a missed or duplicated wake-up costs a read, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import defaultdict
from types import TracebackType
from typing import Protocol


class Subscription(Protocol):
    async def wait(self, timeout: float) -> None:
        """Return when the job may have new events, or after ``timeout`` seconds."""
        ...

    def close(self) -> None: ...


class Notifier(Protocol):
    def publish(self, job_id: str) -> None: ...

    def subscribe(self, job_id: str) -> Subscription: ...


class _LocalSubscription:
    def __init__(self, owner: InProcessNotifier, job_id: str) -> None:
        self._owner = owner
        self.job_id = job_id
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)
        self.event.clear()

    def close(self) -> None:
        self._owner._remove(self)

    def __enter__(self) -> _LocalSubscription:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class InProcessNotifier:
    """Wakes asyncio streams from any thread of the same process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscriptions: dict[str, set[_LocalSubscription]] = defaultdict(set)

    def subscribe(self, job_id: str) -> _LocalSubscription:
        subscription = _LocalSubscription(self, job_id)
        with self._lock:
            self._subscriptions[job_id].add(subscription)
        return subscription

    def publish(self, job_id: str) -> None:
        with self._lock:
            subscriptions = list(self._subscriptions.get(job_id, ()))
        for subscription in subscriptions:
            try:
                subscription.loop.call_soon_threadsafe(subscription.event.set)
            except RuntimeError:  # the stream's loop has closed
                self._remove(subscription)

    def _remove(self, subscription: _LocalSubscription) -> None:
        with self._lock:
            subscribers = self._subscriptions.get(subscription.job_id)
            if subscribers is not None:
                subscribers.discard(subscription)
                if not subscribers:
                    del self._subscriptions[subscription.job_id]
