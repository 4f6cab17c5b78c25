"""Lines logged while the API serves a request about a job name the job and its tenant,
as the worker's do: the handler's own lines and uvicorn's access line alike.

A handler may run on a thread of its own, and uvicorn writes the access line in the
request's task when the response starts, so what a handler learns (the caller's tenant,
the job a new id names) is kept on the request's state, which every part of the request
shares, and bound for the logger where each line is written.
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_KEY = "log_context"


def name_in_logs(request: Request, **fields: str | None) -> None:
    """From now on, lines logged for this request carry ``fields`` (those not ``None``)."""
    given = {k: v for k, v in fields.items() if v is not None}
    state: dict[str, Any] = request.scope.setdefault("state", {})
    state.setdefault(_KEY, {}).update(given)
    structlog.contextvars.bind_contextvars(**given)


class LogContext:
    """Binds what the request's handlers named just before the response starts, so that
    the access line (written inside ``send``) carries it too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                named = scope.get("state", {}).get(_KEY)
                if named:
                    structlog.contextvars.bind_contextvars(**named)
            await send(message)

        await self.app(scope, receive, send_named)
