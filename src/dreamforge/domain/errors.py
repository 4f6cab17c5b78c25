"""Stable error codes and the exceptions that carry them across layers."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel


class ErrorCode(StrEnum):
    VALIDATION_ERROR = "VALIDATION_ERROR"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    CONFLICT = "CONFLICT"
    IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"
    MODEL_NOT_READY = "MODEL_NOT_READY"
    GPU_OOM = "GPU_OOM"
    INSUFFICIENT_VRAM = "INSUFFICIENT_VRAM"
    TIMEOUT = "TIMEOUT"
    CANCELED = "CANCELED"
    RUNNER_ERROR = "RUNNER_ERROR"
    RUNNER_CRASHED = "RUNNER_CRASHED"
    WORKER_LOST = "WORKER_LOST"
    STORAGE_ERROR = "STORAGE_ERROR"
    PROVIDER_ERROR = "PROVIDER_ERROR"  # a hosted image API refused or failed the request
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    UNAVAILABLE = "UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


class JobError(BaseModel):
    """Why a job failed, as its ``error`` field and its ``done`` event carry it."""

    code: ErrorCode
    message: str


@dataclass(frozen=True)
class FieldProblem:
    """One bad field in a request: where it is, what is wrong, and how to fix it."""

    field: str
    message: str
    fix: str


@dataclass
class DreamForgeError(Exception):
    """An error with a stable code, safe to show to a client."""

    code: ErrorCode
    detail: str
    errors: list[FieldProblem] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # for the HTTP response

    def __str__(self) -> str:
        return f"{self.code}: {self.detail}"


class NotFound(DreamForgeError):
    def __init__(self, what: str, ident: str, code: ErrorCode = ErrorCode.NOT_FOUND) -> None:
        super().__init__(code, f"{what} {ident!r} does not exist")


class InvalidRequest(DreamForgeError):
    def __init__(self, errors: list[FieldProblem], code: ErrorCode = ErrorCode.VALIDATION_ERROR):
        detail = "; ".join(f"{e.field}: {e.message}" for e in errors)
        super().__init__(code, detail, errors)


class Conflict(DreamForgeError):
    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.CONFLICT, detail)


class Unauthorized(DreamForgeError):
    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.UNAUTHORIZED, detail)


class Forbidden(DreamForgeError):
    def __init__(self, detail: str) -> None:
        super().__init__(ErrorCode.FORBIDDEN, detail)
