"""RFC 9457 problem responses for every error the API returns."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Collection, Mapping
from typing import Any, Protocol

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from dreamforge.api.options import allowed_methods
from dreamforge.domain.errors import (
    Conflict,
    DreamForgeError,
    ErrorCode,
    FieldProblem,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthorized,
)
from dreamforge.domain.quotas import QuotaExceeded

log = structlog.get_logger(__name__)

PROBLEM_JSON = "application/problem+json"

TITLES: dict[ErrorCode, str] = {
    ErrorCode.VALIDATION_ERROR: "The request is not valid",
    ErrorCode.NOT_FOUND: "Not found",
    ErrorCode.METHOD_NOT_ALLOWED: "Method not allowed",
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: "Unsupported media type",
    ErrorCode.CONFLICT: "The request conflicts with the resource's state",
    ErrorCode.IDEMPOTENCY_KEY_REUSED: "Idempotency-Key used with another request",
    ErrorCode.MODEL_NOT_FOUND: "Unknown model",
    ErrorCode.MODEL_NOT_READY: "Model not ready",
    ErrorCode.FORBIDDEN: "Forbidden",
    ErrorCode.UNAUTHORIZED: "Unauthorized",
    ErrorCode.QUOTA_EXCEEDED: "Quota exceeded",
    ErrorCode.UNAVAILABLE: "Service unavailable",
    ErrorCode.INTERNAL_ERROR: "Internal error",
}

_STATUS_BY_CLASS: list[tuple[type[DreamForgeError], int]] = [
    (NotFound, 404),
    (InvalidRequest, 422),
    (Conflict, 409),
    (Forbidden, 403),
    (Unauthorized, 401),
    (QuotaExceeded, 429),
]


def problem_type(code: ErrorCode) -> str:
    return f"urn:dreamforge:problem:{code.value.lower().replace('_', '-')}"


def rfc9457(
    status: int,
    code: ErrorCode,
    detail: str,
    instance: str,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": TITLES.get(code, code.value),
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code.value,
    }
    if errors:
        body["errors"] = [e.__dict__ for e in errors]
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


_LISTED = "/openapi.json lists the accepted fields"


def _fix_for(error: dict[str, Any], media: str, known: Collection[str]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if _mislabelled(error, media):
        return f"send it with the header Content-Type: application/json (this request said {media})"
    if kind == "extra_forbidden":
        name = str(error["loc"][-1])
        near = difflib.get_close_matches(name, [k for k in known if k != name], 1, 0.7)
        if near:  # a typo, or another API's name for it ("model" for "model_id")
            return f"remove this field, or did you mean {near[0]}? {_LISTED}"
    fixes = {
        "missing": "add this required field",
        "string_too_short": "send a non-empty value",
        "string_too_long": f"shorten it to at most {ctx.get('max_length')} characters",
        "multiple_of": f"use a multiple of {ctx.get('multiple_of')}, e.g. 1024",
        "greater_than_equal": f"use a value of at least {ctx.get('ge')}",
        "greater_than": f"use a value above {ctx.get('gt')}",
        "less_than_equal": f"use a value of at most {ctx.get('le')}",
        "less_than": f"use a value below {ctx.get('lt')}",
        "enum": f"use one of {ctx.get('expected')}",
        "extra_forbidden": f"remove this field; {_LISTED}",
        "union_tag_invalid": f"use one of {ctx.get('expected_tags')}",
        "union_tag_not_found": 'say which kind of step it is, e.g. "type": "upscale"',
        "too_long": f"send at most {ctx.get('max_length')} of them",
        "json_invalid": "send a valid JSON body",
        "model_attributes_type": "send a JSON object",
        "string_pattern_mismatch": "use an id as the API returned it (letters, digits, - and _)",
    }
    if kind in fixes:
        return fixes[kind]
    if kind.startswith("int_"):
        return "send a whole number"
    if kind.startswith("float_"):
        return "send a number"
    if kind.startswith("string_"):
        return "send a string"
    return "see the request schema in /openapi.json"


def _mislabelled(error: dict[str, Any], media: str) -> bool:
    """The body was not read as JSON because its Content-Type said otherwise: only a body
    labelled JSON is read as JSON, and `curl -d '{...}'` labels a JSON object a form."""
    return error["type"] in ("model_attributes_type", "dict_type") and "json" not in media


def _field_name(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    if error["type"] == "json_invalid":
        return "body"  # its location is a character offset, said in the message
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def _message(error: dict[str, Any]) -> str:
    if error["type"] == "json_invalid":
        reason = (error.get("ctx") or {}).get("error")
        return f"{error['msg']} at character {error['loc'][-1]}" + (f": {reason}" if reason else "")
    return str(error["msg"])


def validation_problems(
    errors: list[dict[str, Any]],
    media: str = "application/json",
    known: Collection[str] = (),
) -> list[FieldProblem]:
    """Each error's field, message and fix; ``media``: the body's Content-Type;
    ``known``: the field names the API accepts, for a misspelt one's fix."""
    return [FieldProblem(_field_name(e), _message(e), _fix_for(e, media, known)) for e in errors]


def body_fields(request: Request) -> frozenset[str]:
    """Every field name the route's JSON body may hold, nested ones too (none if it
    takes no body): the names a misspelt field is compared with."""
    body = getattr(request.scope.get("route"), "body_field", None)
    return _schema_fields(body.field_info.annotation) if body is not None else frozenset()


@functools.cache
def _schema_fields(annotation: Any) -> frozenset[str]:
    schema = TypeAdapter(annotation).json_schema()
    schemas = [schema, *schema.get("$defs", {}).values()]
    return frozenset(name for each in schemas for name in each.get("properties", {}))


class Renderer(Protocol):
    """Writes an error response: as RFC 9457 says, or in the shape of another API for
    routes that copy it (``instance`` is the request's path)."""

    def __call__(
        self,
        status: int,
        code: ErrorCode,
        detail: str,
        instance: str,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> JSONResponse: ...


def install(app: FastAPI, dialects: Mapping[str, Renderer] | None = None) -> None:
    """Problem responses for every error; under a path prefix in ``dialects``, the error
    shape of the API those routes copy instead."""
    spoken = dict(dialects or {})

    def renderer(request: Request) -> Renderer:
        path = request.url.path
        return next((r for prefix, r in spoken.items() if path.startswith(prefix)), rfc9457)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        media = request.headers.get("content-type") or "application/json"  # none: read as JSON
        errors = list(exc.errors())
        problems = validation_problems(errors, media, body_fields(request))
        if any(_mislabelled(e, media) for e in errors):
            [fix] = {p.fix for p in problems if p.field == "body"}
            detail = f"this route reads a JSON body, not {media}"
            body = FieldProblem("body", detail, fix)
            return renderer(request)(
                415, ErrorCode.UNSUPPORTED_MEDIA_TYPE, detail, request.url.path, [body],
                {"Accept-Post": "application/json"},
            )  # fmt: skip
        detail = "; ".join(f"{p.field}: {p.message}" for p in problems)
        return renderer(request)(
            422, ErrorCode.VALIDATION_ERROR, detail, request.url.path, problems
        )

    @app.exception_handler(DreamForgeError)
    async def _domain(request: Request, exc: DreamForgeError) -> JSONResponse:
        status = next((s for cls, s in _STATUS_BY_CLASS if isinstance(exc, cls)), 500)
        # RFC 6750: a 401 names the scheme it wants.
        headers = dict(exc.headers)
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="dreamforge"'
        return renderer(request)(
            status, exc.code, exc.detail, request.url.path, exc.errors, headers
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:  # a body FastAPI could not even decode
            body = FieldProblem("body", str(exc.detail), "send a valid JSON body, in UTF-8")
            return renderer(request)(
                422, ErrorCode.VALIDATION_ERROR, body.message, request.url.path, [body]
            )
        code = {
            404: ErrorCode.NOT_FOUND,
            405: ErrorCode.METHOD_NOT_ALLOWED,
            403: ErrorCode.FORBIDDEN,
            401: ErrorCode.UNAUTHORIZED,
        }.get(exc.status_code, ErrorCode.VALIDATION_ERROR)
        headers = dict(getattr(exc, "headers", None) or {})
        detail = str(exc.detail)
        path = request.url.path
        nowhere = f"nothing is at {path}; /openapi.json lists the API's paths"
        if exc.status_code == 405:  # every method the path has, not the first route's
            methods = allowed_methods(request.app, request)
            if methods == ["OPTIONS"]:  # only the catch-all OPTIONS route matched
                return renderer(request)(404, ErrorCode.NOT_FOUND, nowhere, path)
            headers["Allow"] = ", ".join(methods)
            detail = f"{request.method} is not allowed on {path}; use one of {headers['Allow']}"
        elif exc.status_code == 404 and detail == "Not Found":  # no route, not a missing id
            detail = nowhere
        return renderer(request)(exc.status_code, code, detail, path, headers=headers)

    @app.exception_handler(DBAPIError)
    async def _database(request: Request, exc: DBAPIError) -> JSONResponse:
        # Only a database that cannot be reached is an outage (503); any other database
        # error is a bug of ours, reported as one.
        if (
            not isinstance(exc, OperationalError | InterfaceError)
            and not exc.connection_invalidated
        ):
            return await _unexpected(request, exc)
        log.warning("api.database_unavailable", error=str(exc).splitlines()[0])
        return renderer(request)(
            503,
            ErrorCode.UNAVAILABLE,
            "the database is unavailable; retry shortly",
            request.url.path,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("api.unexpected_error", path=request.url.path)
        return renderer(request)(
            500, ErrorCode.INTERNAL_ERROR, "an unexpected error occurred", request.url.path
        )
