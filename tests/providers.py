"""A local HTTP server that speaks Replicate's predictions API (create, get, cancel, the
output file), as far as Dream Forge uses it; what the prompt says decides how it goes."""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

from tests.hubs import LocalHttpServer

TOKEN = "r8_test_token_do_not_log"
VERSION = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"


@dataclass
class FakeReplicate:
    """``polls`` GETs before a prediction succeeds. Prompts: ``fail`` fails it;
    ``busy`` answers the first create with a 503; ``slow`` never ends by itself."""

    polls: int = 3
    url: str = ""  # set once it serves
    predictions: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    canceled: list[str] = field(default_factory=list)
    refused_creates: int = 0
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def app(self, base: str) -> FastAPI:
        app = FastAPI()

        def authorized(request: Request) -> JSONResponse | None:
            if request.headers.get("authorization") != f"Bearer {TOKEN}":
                return JSONResponse({"detail": "Unauthenticated"}, status_code=401)
            return None

        @app.post("/v1/predictions")
        async def create(request: Request) -> Response:
            if (refused := authorized(request)) is not None:
                return refused
            body = await request.json()
            if body.get("version") != VERSION:
                return JSONResponse({"detail": "version not found"}, status_code=404)
            prompt = body["input"]["prompt"]
            if prompt == "busy" and self.refused_creates == 0:
                self.refused_creates += 1
                return JSONResponse({"detail": "overloaded"}, status_code=503)
            self.created.append(body)
            key = f"p{next(self._ids)}"
            prediction = {
                "id": key,
                "version": body["version"],
                "input": body["input"],
                "status": "starting",
                "logs": "",
                "output": None,
                "error": None,
                "urls": {
                    "get": f"{base}/v1/predictions/{key}",
                    "cancel": f"{base}/v1/predictions/{key}/cancel",
                },
                "_polls": 0,
            }
            self.predictions[key] = prediction
            return JSONResponse(_public(prediction), status_code=201)

        @app.get("/v1/predictions/{key}")
        def get(key: str, request: Request) -> Response:
            if (refused := authorized(request)) is not None:
                return refused
            prediction = self.predictions[key]
            if prediction["status"] in ("succeeded", "failed", "canceled"):
                return JSONResponse(_public(prediction))
            prediction["_polls"] += 1
            steps = prediction["input"]["num_inference_steps"]
            done = min(steps, steps * prediction["_polls"] // self.polls)
            prediction["status"] = "processing"
            prediction["logs"] += f"{100 * done // steps}%|####| {done}/{steps} [00:01<00:01]\n"
            prompt = prediction["input"]["prompt"]
            if prompt == "slow":
                prediction["logs"] = f"  1%|     | 1/{steps} [00:01<00:10]\n"
            elif prediction["_polls"] >= self.polls:
                if prompt == "fail":
                    prediction["status"] = "failed"
                    prediction["error"] = "NSFW content detected. Try running it again."
                else:
                    prediction["status"] = "succeeded"
                    prediction["output"] = [f"{base}/files/{key}.png"]
            return JSONResponse(_public(prediction))

        @app.post("/v1/predictions/{key}/cancel")
        def cancel(key: str, request: Request) -> Response:
            if (refused := authorized(request)) is not None:
                return refused
            self.canceled.append(key)
            self.predictions[key]["status"] = "canceled"
            return JSONResponse(_public(self.predictions[key]))

        @app.get("/files/{name}")
        def file(name: str, request: Request) -> Response:
            assert "authorization" not in request.headers  # the token stays with the API
            prediction = self.predictions[name.removesuffix(".png")]
            spec = prediction["input"]
            rng = np.random.default_rng(spec["seed"])
            pixels = rng.integers(0, 256, (spec["height"], spec["width"], 3), dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
            return Response(buffer.getvalue(), media_type="image/png")

        return app

    def serve(self) -> LocalHttpServer:
        server = LocalHttpServer(FastAPI())
        self.url = server.url
        # The app names its own address in what it returns: made once the port is known.
        server.server.config.app = self.app(server.url)
        return server


def _public(prediction: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in prediction.items() if not k.startswith("_")}
