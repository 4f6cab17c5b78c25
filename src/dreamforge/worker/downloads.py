"""Runs one background download (the io queue): claim it, pull the model, record the end.

Safe to call twice: only one call claims the download. Progress goes to followers as it
comes and to the database at most every ``persist_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog

from dreamforge.domain.clock import utcnow
from dreamforge.domain.events import EventType, JobEvent
from dreamforge.domain.records import DownloadStatus
from dreamforge.events.notifier import Notifier
from dreamforge.metrics import DOWNLOAD_BYTES
from dreamforge.models.fetch import DownloadError
from dreamforge.models.formats import UnsupportedModel
from dreamforge.models.pull import ModelPuller, PullSettings
from dreamforge.models.registry import ModelRegistry
from dreamforge.models.sources import BadSource
from dreamforge.store.downloads import DownloadRepository

log = structlog.get_logger(__name__)


class DownloadWorker:
    def __init__(
        self,
        downloads: DownloadRepository,
        registry: ModelRegistry,
        notifier: Notifier,
        settings: PullSettings,
        persist_s: float = 1.0,
    ) -> None:
        self._downloads = downloads
        self._registry = registry
        self._notifier = notifier
        self._settings = settings
        self._persist_s = persist_s

    def run(self, download_id: str) -> DownloadStatus | None:
        download = self._downloads.claim(download_id)
        if download is None:
            log.info("download.not_claimed", download_id=download_id)
            return None
        self._tell(download_id, EventType.STATUS, {"status": DownloadStatus.RUNNING.value})
        model_id, error = None, None
        progress = _Progress(
            lambda data: self._tell(download_id, EventType.PROGRESS, data),
            lambda done, total: self._downloads.progress(download_id, done, total),
            self._persist_s,
        )
        try:
            with httpx.Client(timeout=60, follow_redirects=False) as client:
                puller = ModelPuller(self._registry, self._settings, client)
                model = puller.pull(download.source, download.model_id, progress.report)
            model_id = model.id
        except (BadSource, DownloadError, UnsupportedModel) as exc:
            error = str(exc)
        except Exception as exc:  # the download must end, whatever broke
            log.exception("download.crashed", download_id=download_id)
            error = f"{type(exc).__name__}: {exc}"
        status = DownloadStatus.FAILED if error else DownloadStatus.SUCCEEDED
        self._downloads.progress(download_id, progress.done, progress.total)  # the last figure
        self._downloads.finish(download_id, status, model_id, error)
        self._tell(download_id, EventType.DONE, {"status": status.value})
        log.info("download.finished", download_id=download_id, status=status, error=error)
        return status

    def _tell(self, download_id: str, kind: EventType, data: dict[str, Any]) -> None:
        self._notifier.publish(download_id, [JobEvent(download_id, None, kind, data, utcnow())])


class _Progress:
    """Bytes so far: to followers every 0.2 s, to the database every ``persist_s``."""

    def __init__(
        self,
        tell: Callable[[dict[str, Any]], None],
        save: Callable[[int, int | None], None],
        persist_s: float,
    ) -> None:
        self._tell, self._save, self._persist_s = tell, save, persist_s
        self._told = self._saved = 0.0
        self.done: int = 0
        self.total: int | None = None

    def report(self, done: int, total: int | None) -> None:
        if done > self.done:
            DOWNLOAD_BYTES.inc(done - self.done)
        self.done, self.total = done, total
        now = time.monotonic()
        if now - self._told >= 0.2:  # chunks arrive far more often than anyone looks
            self._told = now
            self._tell({"bytes_done": done, "bytes_total": total})
        if now - self._saved >= self._persist_s:
            self._saved = now
            self._save(done, total)
