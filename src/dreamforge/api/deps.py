"""Request-scoped access to the runtime and URL building."""

from __future__ import annotations

from fastapi import Request

from dreamforge.runtime import Runtime


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def base_url(request: Request) -> str:
    configured = runtime(request).settings.public_url
    return (configured or str(request.base_url)).rstrip("/")
