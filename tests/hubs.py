"""Local HTTP servers that speak the Hugging Face Hub's and CivitAI's APIs, as far as
Dream Forge uses them: what stands in for the internet in the tests."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse

from tests.services import free_port


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:
        pass


class LocalHttpServer:
    def __init__(self, app: FastAPI) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = _Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LocalHttpServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the fake hub did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def _ranged(
    request: Request, data: bytes, media_type: str, cut_at: int | None, seconds: float = 0.0
) -> Response:
    """The file, or the part a Range header asks for; ``cut_at`` breaks the connection
    after that many bytes of the body, as a flaky network does."""
    start = 0
    if (header := request.headers.get("range")) and header.startswith("bytes="):
        start = int(header.removeprefix("bytes=").split("-", 1)[0])
    body = data[start:]
    headers = {"Content-Length": str(len(body)), "Accept-Ranges": "bytes"}
    status = 200
    if start:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"

    async def chunks() -> AsyncIterator[bytes]:
        if cut_at is not None:
            yield body[:cut_at]
            raise ConnectionResetError("the fake network dropped the connection")
        pieces = 20 if seconds else 1  # a slow link: the body in pieces over ``seconds``
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            await asyncio.sleep(seconds / pieces)
            yield body[start : start + step]

    return StreamingResponse(chunks(), status_code=status, headers=headers, media_type=media_type)


# -- CivitAI -----------------------------------------------------------------------------


@dataclass
class CivitaiVersion:
    id: int
    model_id: int
    name: str
    data: bytes
    base_model: str = "SDXL 1.0"
    declared_sha256: str | None = None  # default: the data's own
    needs_token: bool = False
    cdn_host: str = "127.0.0.1"
    cut_first_download_at: int | None = None
    seconds: float = 0.0  # how long the CDN takes to send it

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest().upper()  # CivitAI writes it in capitals


@dataclass
class FakeCivitai:
    token: str = "civitai-token-of-the-test"
    versions: dict[int, CivitaiVersion] = field(default_factory=dict)
    cdn_requests: list[dict[str, str]] = field(default_factory=list)

    def add(self, version: CivitaiVersion) -> CivitaiVersion:
        self.versions[version.id] = version
        return version

    def app(self, port_holder: list[int]) -> FastAPI:
        app = FastAPI()

        def authorised(request: Request) -> bool:
            return request.headers.get("authorization") == f"Bearer {self.token}"

        @app.get("/api/v1/models/{model_id}")
        def model(model_id: int) -> Any:
            ids = sorted(
                (v.id for v in self.versions.values() if v.model_id == model_id), reverse=True
            )
            if not ids:
                return JSONResponse({"error": "not found"}, 404)
            return {"id": model_id, "modelVersions": [{"id": i} for i in ids]}

        @app.get("/api/v1/model-versions/{version_id}")
        def version(version_id: int, request: Request) -> Any:
            v = self.versions.get(version_id)
            if v is None:
                return JSONResponse({"error": "not found"}, 404)
            base = f"http://127.0.0.1:{port_holder[0]}"
            return {
                "id": v.id,
                "modelId": v.model_id,
                "name": f"v{v.id}",
                "baseModel": v.base_model,
                "model": {"name": v.name, "type": "Checkpoint"},
                "files": [
                    {"name": "training-data.zip", "type": "Training Data", "hashes": {}},
                    {
                        "name": v.name,
                        "type": "Model",
                        "primary": True,
                        "sizeKB": len(v.data) / 1024,
                        "metadata": {"format": "SafeTensor"},
                        "hashes": {
                            "SHA256": (
                                v.declared_sha256 or hashlib.sha256(v.data).hexdigest()
                            ).upper()
                        },
                        "downloadUrl": f"{base}/api/download/models/{v.id}",
                    },
                ],
            }

        @app.get("/api/download/models/{version_id}")
        def download(version_id: int, request: Request) -> Response:
            v = self.versions[version_id]
            if v.needs_token and not authorised(request):
                # What CivitAI does: its login page, with a 200.
                return HTMLResponse("<html><body>Please log in</body></html>")
            cdn = f"http://{v.cdn_host}:{port_holder[0]}/cdn/{v.id}/file?signature=abc"
            return RedirectResponse(cdn, status_code=307)

        @app.get("/cdn/{version_id}/file")
        def cdn(version_id: int, request: Request) -> Response:
            v = self.versions[version_id]
            self.cdn_requests.append(dict(request.headers))
            cut, v.cut_first_download_at = v.cut_first_download_at, None
            return _ranged(request, v.data, "application/octet-stream", cut, v.seconds)

        return app


# -- the Hugging Face Hub ------------------------------------------------------------------


@dataclass
class FakeHub:
    """Repositories of files at one commit each; big files are LFS (sha256 declared)."""

    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    corrupt: set[str] = field(default_factory=set)  # served with a byte changed
    private: set[str] = field(default_factory=set)  # repositories that need the token
    token: str = "hf-token-of-the-test"

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def gate(request: Request, call_next: Any) -> Response:
            parts = request.url.path.removeprefix("/api/models/").strip("/").split("/")
            repo = "/".join(parts[:2])
            allowed = request.headers.get("authorization") == f"Bearer {self.token}"
            if repo in self.private and not allowed:
                return JSONResponse({"error": "Invalid credentials"}, 401)
            response: Response = await call_next(request)
            return response

        @app.get("/api/models/{org}/{name}")
        @app.get("/api/models/{org}/{name}/revision/{revision}")
        def info(org: str, name: str, revision: str = "main") -> Any:
            repo = f"{org}/{name}"
            if repo not in self.repos:
                return JSONResponse({"error": "Repository not found"}, 404)
            files = self.repos[repo]
            return {"id": repo, "sha": self.commit, "siblings": [{"rfilename": p} for p in files]}

        @app.get("/api/models/{org}/{name}/tree/{revision}")
        def tree(org: str, name: str, revision: str) -> Any:
            return [self._entry(path, data) for path, data in self.repos[f"{org}/{name}"].items()]

        @app.get("/{org}/{name}/resolve/{revision}/{path:path}")
        def resolve(org: str, name: str, revision: str, path: str, request: Request) -> Response:
            data = self.repos[f"{org}/{name}"].get(path)
            if data is None:
                return JSONResponse({"error": "Entry not found"}, 404)
            if path in self.corrupt:
                data = data[:-1] + bytes([data[-1] ^ 1])
            return _ranged(request, data, "application/octet-stream", None)

        return app

    @staticmethod
    def _entry(path: str, data: bytes) -> dict[str, Any]:
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": blob}
        if path.endswith(".safetensors"):
            sha = hashlib.sha256(data).hexdigest()
            entry["lfs"] = {"oid": sha, "size": len(data), "pointerSize": 134}
        return entry
