"""Process logging: structlog for Dream Forge's own lines, the standard library's for
uvicorn's and Dramatiq's, all through one renderer: a console line, or a JSON object a line
(``DREAMFORGE_LOG_FORMAT=json``) for a log pipeline.

Lines written while a worker holds a job carry its ``job_id`` and ``tenant`` (bound with
``bound_job``). Tracebacks are plain text, never rich's, which print every frame's locals,
settings and secrets included.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import structlog

LogFormat = Literal["console", "json"]

# Query parameters that are credentials: a signed artifact URL is a bearer link, and the
# access log would otherwise keep every one it served.
_SECRET_QUERY = re.compile(r"((?:signature|x-amz-signature|token|api_key)=)[^&\s\"]+", re.I)


def redact(text: str) -> str:
    return _SECRET_QUERY.sub(r"\1[redacted]", text)


class _Redact(logging.Filter):
    """Takes credentials out of URLs in any line (uvicorn's access log passes the path
    with its query string as an argument)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        return True


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time, not the one it was made with (a
    test runner swaps it, and closes its own afterwards)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def configure(log_format: LogFormat = "console", level: int = logging.INFO) -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper("iso"),
    ]
    renderer: structlog.types.Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = _Stderr()
    handler.addFilter(_Redact())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # A line per HTTP request the service makes (webhooks, downloads) is noise; so are
    # alembic's lines at every start (its plugins, its dialect), a migration is logged as
    # store.migrated.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # uvicorn configures its own handlers; its lines go through ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


@contextmanager
def bound_job(job_id: str, tenant: str) -> Iterator[None]:
    """Every line logged in this thread meanwhile names the job and its tenant."""
    with structlog.contextvars.bound_contextvars(job_id=job_id, tenant=tenant):
        yield


@contextmanager
def outside_any_job() -> Iterator[None]:
    """Lines logged in this thread meanwhile name no job, though one is bound: they tell
    of the service, not of the job at hand."""
    bound = structlog.contextvars.get_contextvars()
    structlog.contextvars.clear_contextvars()
    try:
        yield
    finally:
        structlog.contextvars.bind_contextvars(**bound)
