"""What both clients send and how they read the answers: each call is an ``httpx.Request``
and a parser, made here without any I/O, so the sync and async clients differ only in
how they send."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx
from pydantic import BaseModel

from dreamforge.api.schemas import ArtifactListOut, ArtifactOut, JobListOut, JobOut, ModelListOut
from dreamforge.domain.events import PAYLOADS, EventData, EventType
from dreamforge.domain.jobs import JobRequest, JobStatus

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "DREAMFORGE_URL"
API_KEY_ENV = "DREAMFORGE_API_KEY"


def default_url() -> str:
    return os.environ.get(URL_ENV, DEFAULT_URL)


class ApiError(Exception):
    """The server refused a request: its problem document, read."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code: str = problem.get("code", "HTTP_ERROR")
        self.detail: str = problem.get("detail", "")
        self.errors: list[dict[str, str]] = problem.get("errors") or []
        fixes = "; ".join(f"{e['field']}: {e['message']} ({e['fix']})" for e in self.errors)
        super().__init__(f"{status} {self.code}: {fixes or self.detail}")


@dataclass(frozen=True)
class Event:
    """One event of a job's stream: ``seq`` is ``None`` for live progress (not replayed)."""

    type: EventType
    seq: int | None
    ts: datetime
    data: EventData

    @classmethod
    def parse(cls, text: str) -> Event:
        fields = json.loads(text)
        kind = EventType(fields.pop("type"))
        seq = fields.pop("seq", None)
        ts = datetime.fromisoformat(fields.pop("ts"))
        return cls(kind, seq, ts, PAYLOADS[kind].model_validate(fields))


@dataclass(frozen=True)
class Call(Generic[T]):
    request: httpx.Request
    parse: Callable[[httpx.Response], T]


def checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        problem = response.json()
    except ValueError:
        problem = {"detail": response.text[:500]}
    raise ApiError(response.status_code, problem if isinstance(problem, dict) else {})


def _model(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate_json(checked(response).content)


class Calls:
    """The requests of the Dream Forge API, built against ``http``'s base URL."""

    def __init__(self, http: httpx.Client | httpx.AsyncClient) -> None:
        self._http = http

    def submit(self, request: JobRequest, idempotency_key: str | None) -> Call[JobOut]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = request.model_dump(mode="json", exclude_unset=True)
        built = self._http.build_request("POST", "/v1/jobs", json=body, headers=headers)
        return Call(built, _model(JobOut))

    def job(self, job_id: str) -> Call[JobOut]:
        return Call(self._http.build_request("GET", f"/v1/jobs/{job_id}"), _model(JobOut))

    def jobs(self, status: JobStatus | None, limit: int, cursor: str | None) -> Call[JobListOut]:
        params: dict[str, str | int] = {"limit": limit}
        if status is not None:
            params["status"] = status.value
        if cursor is not None:
            params["cursor"] = cursor
        built = self._http.build_request("GET", "/v1/jobs", params=params)
        return Call(built, _model(JobListOut))

    def cancel(self, job_id: str) -> Call[JobOut]:
        built = self._http.build_request("POST", f"/v1/jobs/{job_id}/cancel")
        return Call(built, _model(JobOut))

    def artifacts(self, job_id: str) -> Call[list[ArtifactOut]]:
        built = self._http.build_request("GET", f"/v1/jobs/{job_id}/artifacts")
        return Call(built, lambda response: _model(ArtifactListOut)(response).data)

    def download(self, artifact: ArtifactOut) -> Call[bytes]:
        # The URL is signed: it needs no key, and may point at another host (S3).
        built = self._http.build_request("GET", artifact.url)
        return Call(built, lambda response: checked(response).content)

    def logs(self, job_id: str, tail: int | None) -> Call[list[Event]]:
        params = {"tail": tail} if tail else {}
        built = self._http.build_request("GET", f"/v1/jobs/{job_id}/logs", params=params)
        return Call(
            built,
            lambda response: [Event.parse(line) for line in checked(response).text.splitlines()],
        )

    def models(self) -> Call[ModelListOut]:
        return Call(self._http.build_request("GET", "/v1/models"), _model(ModelListOut))


def stream_path(job_id: str) -> str:
    return f"/v1/jobs/{job_id}/progress/stream"


def resume_headers(last_seq: int | None) -> dict[str, str]:
    return {"Last-Event-ID": str(last_seq)} if last_seq is not None else {}


def headers_for(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def artifact_path(directory: Path, artifact: ArtifactOut) -> Path:
    """Where ``save`` writes an image: its key's last two parts (step, item)."""
    step, name = artifact.key.split("/")[-2:]
    return directory / f"{step}-{name}"


def request_of(request: JobRequest | None, fields: dict[str, Any]) -> JobRequest:
    if request is not None and fields:
        raise TypeError("give a JobRequest or fields, not both")
    return request if request is not None else JobRequest(**fields)


# A dropped stream is joined again this many times, this long apart at first (doubling).
RECONNECTS = 5
RECONNECT_S = 0.5
