"""A task run every so often in a daemon thread until stopped; a failure is logged and
tried again next time (the database may be down for a while)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


class Every:
    def __init__(self, interval_s: float, task: Callable[[], object], name: str) -> None:
        self._interval_s = interval_s
        self._task = task
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self._task()
            except Exception:
                log.warning("periodic.failed", task=self._thread.name, exc_info=True)
