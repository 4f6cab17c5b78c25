"""The API as an ASGI factory, for servers that start their own worker processes
(`dreamforge api --workers N`, or `uvicorn --factory dreamforge.api.asgi:create`)."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import ValidationError
from pydantic_settings import SettingsError

from dreamforge import logs
from dreamforge.api.app import create_app
from dreamforge.config import Settings, setting_errors
from dreamforge.runtime import Runtime


def create() -> FastAPI:
    """Settings come from the environment (``DREAMFORGE_*``), as in every process; settings
    that are not valid stop the process, a line each."""
    try:
        settings = Settings()
    except (ValidationError, SettingsError) as exc:
        lines = ["the settings are not valid:", *setting_errors(exc)]
        raise SystemExit("\n  ".join(lines)) from None
    logs.configure(settings.log_format)
    return create_app(Runtime.build(settings))
