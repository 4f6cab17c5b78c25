"""The API as an ASGI factory, for servers that start their own worker processes
(`dreamforge api --workers N`, or `uvicorn --factory dreamforge.api.asgi:create`)."""

from __future__ import annotations

from fastapi import FastAPI

from dreamforge import logs
from dreamforge.api.app import create_app
from dreamforge.config import SettingsNotValid, read_settings
from dreamforge.runtime import Runtime


def create() -> FastAPI:
    """Settings come from the environment (``DREAMFORGE_*``), as in every process; settings
    that are not valid stop the process, a line each."""
    try:
        settings = read_settings()
    except SettingsNotValid as exc:
        raise SystemExit(str(exc)) from None
    logs.configure(settings.log_format)
    return create_app(Runtime.build(settings))
