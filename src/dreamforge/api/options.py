"""``OPTIONS`` on any path, and ``Allow`` on a 405, list every method the path has.

Starlette answers with the methods of the first route whose path matches, but a path can
have several routes (``GET /v1/models`` lists, ``POST /v1/models`` downloads): each
method is asked of every route.
"""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request, Response
from starlette.routing import Match

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def allowed_methods(app: FastAPI, request: Request) -> list[str]:
    routes = [r for r in app.router.routes if getattr(r, "methods", None) != {"OPTIONS"}]
    methods = {"OPTIONS"}
    for method in METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in routes):
            methods.add(method)
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever GET is
    return sorted(methods)


def install(app: FastAPI) -> None:
    @app.options("/{path:path}", include_in_schema=False)
    def options(request: Request) -> Response:
        methods = allowed_methods(app, request)
        if methods == ["OPTIONS"]:  # no such path
            raise HTTPException(404)  # the problem handler says what there is instead
        return Response(status_code=204, headers={"Allow": ", ".join(methods)})
