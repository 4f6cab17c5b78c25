"""Models fetched in the background: what the API asks for, and how it follows one."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import closing

from dreamforge.domain.access import visible_to
from dreamforge.domain.errors import FieldProblem, InvalidRequest, NotFound
from dreamforge.domain.events import EventType
from dreamforge.domain.records import Download
from dreamforge.events.notifier import Notifier
from dreamforge.models.sources import FORMS, BadSource, parse_source
from dreamforge.store.downloads import DownloadRepository


class DownloadService:
    def __init__(
        self,
        downloads: DownloadRepository,
        notifier: Notifier,
        enqueue: Callable[[str], None],
        poll_s: float = 2.0,
    ) -> None:
        self._downloads = downloads
        self._notifier = notifier
        self._enqueue = enqueue
        self._poll_s = poll_s

    def submit(self, source: str, model_id: str | None, tenant: str) -> Download:
        """Check the source, record the download and queue it on the io queue."""
        try:
            parse_source(source)
        except BadSource as exc:
            raise InvalidRequest([FieldProblem("source", str(exc).split(";")[0], FORMS)]) from exc
        download = self._downloads.create(str(uuid.uuid4()), source, model_id, tenant)
        self._enqueue(download.id)
        return download

    def recent(self, tenant: str, limit: int = 20) -> list[Download]:
        return self._downloads.recent(tenant, limit)

    def get(self, download_id: str, tenant: str) -> Download:
        download = self._downloads.get(download_id)
        if download is None or not visible_to(tenant, download.tenant):
            raise NotFound("download", download_id)
        return download

    async def follow(self, download_id: str, tenant: str) -> AsyncIterator[Download]:
        """The download as it is now, then again at each change, until it has ended."""
        with closing(self._notifier.subscribe(download_id)) as subscription:
            current = await asyncio.to_thread(self.get, download_id, tenant)
            yield current
            while not current.status.is_terminal:
                events = await subscription.wait(self._poll_s)
                progress = [e for e in events if e.type is EventType.PROGRESS]
                if events and len(progress) == len(events):
                    done, total = progress[-1].data["bytes_done"], progress[-1].data["bytes_total"]
                    current = dataclasses.replace(current, bytes_done=done, bytes_total=total)
                else:  # a status change, or quiet for a while: the row has the truth
                    row = await asyncio.to_thread(self.get, download_id, tenant)
                    # The row's bytes lag behind live ones while it runs: never go back.
                    done = row.bytes_done
                    if not row.status.is_terminal:
                        done = max(done, current.bytes_done)
                    current = dataclasses.replace(row, bytes_done=done)
                yield current
