"""The unified downloader: a model from Hugging Face, CivitAI or a URL into the registry.

Every file is verified against the hash its source declares (the Hub's LFS sha256,
CivitAI's SHA256) before anything is registered; a mismatch keeps nothing. Downloads are
assembled in a staging folder beside the models, where an interrupted one resumes.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog
from pydantic import SecretStr

from dreamforge.config import Settings
from dreamforge.domain.clock import utcnow
from dreamforge.domain.records import Model
from dreamforge.models.fetch import DownloadError, HashMismatch, Progress, fetch, safe_name
from dreamforge.models.formats import PICKLED_SUFFIXES, UnsupportedModel
from dreamforge.models.registry import ModelRegistry
from dreamforge.models.sources import Civitai, HuggingFace, Url, parse_source

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class PullSettings:
    models_dir: Path
    hf_endpoint: str
    civitai_endpoint: str
    allowed_hosts: list[str]
    max_bytes: int
    allow_pickles: bool = False
    hf_token: str | None = field(default=None, repr=False)
    civitai_token: str | None = field(default=None, repr=False)

    @classmethod
    def of(cls, settings: Settings) -> PullSettings:
        def secret(value: SecretStr | None) -> str | None:
            return value.get_secret_value() if value is not None else None

        return cls(
            models_dir=settings.models_dir,
            hf_endpoint=settings.hf_endpoint,
            civitai_endpoint=settings.civitai_endpoint,
            allowed_hosts=settings.allowed_download_hosts,
            max_bytes=settings.max_download_bytes,
            allow_pickles=settings.allow_pickled_weights,
            hf_token=secret(settings.hf_token),
            civitai_token=secret(settings.civitai_token),
        )


class ModelPuller:
    def __init__(
        self, registry: ModelRegistry, settings: PullSettings, client: httpx.Client
    ) -> None:
        self._registry = registry
        self._settings = settings
        self._client = client
        self._staged: Path | None = None  # the staging folder of the pull under way

    def pull(
        self, text: str, model_id: str | None = None, progress: Progress | None = None
    ) -> Model:
        """Download ``text`` (see ``sources``) and register it; raises ``BadSource``,
        ``DownloadError`` or ``UnsupportedModel``, with nothing registered."""
        source = parse_source(text)
        self._staged = None
        try:
            if isinstance(source, Civitai):
                return self._civitai(source, model_id, progress)
            if isinstance(source, HuggingFace):
                return self._hugging_face(source, model_id, progress)
            return self._url(source, model_id, progress)
        except (HashMismatch, UnsupportedModel):
            # Nothing of a download that proved wrong is worth resuming. Only this pull's
            # folder: another worker may be assembling its own beside it.
            staged = self._staged
            if staged is not None and not any(staged.rglob("*.partial")):
                shutil.rmtree(staged, ignore_errors=True)
            raise

    # -- CivitAI ----------------------------------------------------------------------

    def _civitai(self, source: Civitai, model_id: str | None, progress: Progress | None) -> Model:
        version_id = source.version_id or self._newest_version(source.model_id)
        version = self._civitai_json(f"/api/v1/model-versions/{version_id}")
        base = str(version.get("baseModel", ""))
        if re.match(r"SD ?[12]", base):
            raise UnsupportedModel(f"civitai:{version_id} is {base}: not supported yet (SDXL only)")
        file = _primary_model_file(version.get("files", []), version_id)
        name = safe_name(str(file["name"]))
        declared = (file.get("hashes") or {}).get("SHA256")
        if not declared:
            raise DownloadError(f"civitai:{version_id} declares no SHA256 for {name}")
        self._refuse_pickles(name)
        model_id = model_id or _slug(name)
        staging = self._staging(model_id)
        fetch(
            self._client,
            str(file["downloadUrl"]),
            staging / name,
            allowed_hosts=self._settings.allowed_hosts,
            max_bytes=self._settings.max_bytes,
            expected_sha256=str(declared),
            auth=_bearer(self._settings.civitai_token),
            progress=progress,
        )
        return self._register(
            staging,
            model_id,
            f"civitai:{version_id}",
            revision=str(version_id),
            provenance={
                "url": str(file["downloadUrl"]),
                "civitai": {
                    "model": (version.get("model") or {}).get("name"),
                    "version": version.get("name"),
                    "base_model": base,
                    "model_id": version.get("modelId"),
                },
            },
        )

    def _newest_version(self, model_id: int | None) -> int:
        assert model_id is not None, "a CivitAI source names a model or a version"
        versions = self._civitai_json(f"/api/v1/models/{model_id}").get("modelVersions") or []
        if not versions:
            raise DownloadError(f"CivitAI model {model_id} has no versions")
        return int(versions[0]["id"])

    def _civitai_json(self, path: str) -> dict[str, Any]:
        url = self._settings.civitai_endpoint.rstrip("/") + path
        response = self._client.get(url, headers=_bearer(self._settings.civitai_token))
        if response.status_code == 404:
            raise DownloadError(f"CivitAI has nothing at {path}")
        if response.status_code in (401, 403):
            raise DownloadError(f"CivitAI refused {path}: set CIVITAI_TOKEN")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    # -- a plain URL ------------------------------------------------------------------

    def _url(self, source: Url, model_id: str | None, progress: Progress | None) -> Model:
        name = safe_name(source.url.split("?", 1)[0].rsplit("/", 1)[-1])
        self._refuse_pickles(name)
        model_id = model_id or _slug(name)
        staging = self._staging(model_id)
        fetch(
            self._client,
            source.url,
            staging / name,
            allowed_hosts=self._settings.allowed_hosts,
            max_bytes=self._settings.max_bytes,
            progress=progress,
        )
        return self._register(staging, model_id, source.url, provenance={"url": source.url})

    # -- Hugging Face -----------------------------------------------------------------

    def _hugging_face(
        self, source: HuggingFace, model_id: str | None, progress: Progress | None
    ) -> Model:
        from huggingface_hub import HfApi, RepoFile  # heavy; only when the Hub is used
        from huggingface_hub.errors import HfHubHTTPError

        api = HfApi(endpoint=self._settings.hf_endpoint, token=self._settings.hf_token)
        try:
            commit = api.repo_info(source.repo, revision=source.revision).sha
            entries = {
                f.path: f
                for f in api.list_repo_tree(source.repo, recursive=True, revision=commit)
                if isinstance(f, RepoFile)
            }
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            hint = "; if it is private or gated, set HF_TOKEN" if status in (401, 403, 404) else ""
            where = f"{source.repo}@{source.revision or 'main'}"
            raise DownloadError(f"the Hub could not give {where} ({status}){hint}") from exc
        if source.file is not None:
            wanted = [source.file]
            if source.file not in entries:
                raise DownloadError(f"{source.repo}@{commit} has no file {source.file}")
        else:
            wanted = [path for path in entries if _diffusers_file(path)]
            if "model_index.json" not in wanted:
                raise UnsupportedModel(f"{source.repo} is not a diffusers repository")
        for path in wanted:
            self._refuse_pickles(path)
        model_id = model_id or _slug(source.file or source.repo.split("/")[-1])
        staging = self._staging(model_id)
        base = f"{self._settings.hf_endpoint.rstrip('/')}/{source.repo}/resolve/{commit}/"
        total = sum(int(entries[p].size) for p in wanted)
        done = 0
        for path in wanted:
            entry = entries[path]
            target = staging / (Path(path).name if source.file else path)
            lfs = getattr(entry, "lfs", None)
            before = done
            digest = fetch(
                self._client,
                base + path,
                target,
                allowed_hosts=self._settings.allowed_hosts,
                max_bytes=self._settings.max_bytes,
                expected_sha256=lfs.sha256 if lfs else None,
                auth=_bearer(self._settings.hf_token),
                progress=_offset(progress, before, total),
            )
            if lfs is None:
                _check_git_blob(target, str(entry.blob_id), path, digest)
            done += int(entry.size)
        return self._register(
            staging,
            model_id,
            f"hf:{source.repo}" + (f"/{source.file}" if source.file else ""),
            revision=commit,
            provenance={"url": f"{self._settings.hf_endpoint}/{source.repo}", "commit": commit},
        )

    # -- shared -----------------------------------------------------------------------

    def _refuse_pickles(self, name: str) -> None:
        if Path(name).suffix in PICKLED_SUFFIXES and not self._settings.allow_pickles:
            raise UnsupportedModel(
                f"{name} is pickled and can run code when loaded; pick a .safetensors file, "
                "or set DREAMFORGE_ALLOW_PICKLED_WEIGHTS=true if you trust the source"
            )

    def _staging(self, model_id: str) -> Path:
        if self._registry.get(model_id) is not None:
            raise UnsupportedModel(f"a model {model_id!r} is registered already; pick another id")
        staging = self._settings.models_dir / f".{model_id}.download"
        staging.mkdir(parents=True, exist_ok=True)  # kept between tries: downloads resume
        self._staged = staging
        return staging

    def _register(
        self,
        staging: Path,
        model_id: str,
        source: str,
        revision: str | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Model:
        for partial in staging.rglob("*.partial"):
            partial.unlink()
        model = self._registry.register_staged(
            staging,
            self._settings.models_dir,
            model_id,
            source,
            revision,
            {**(provenance or {}), "fetched_at": utcnow().isoformat()},
            self._settings.allow_pickles,
        )
        log.info("model.pulled", model_id=model.id, source=source, sha256=model.sha256)
        return model


def _primary_model_file(files: list[dict[str, Any]], version_id: int) -> dict[str, Any]:
    models = [f for f in files if f.get("type", "Model") == "Model"]
    if not models:
        raise DownloadError(f"civitai:{version_id} has no model file")
    return next((f for f in models if f.get("primary")), models[0])


def _diffusers_file(path: str) -> bool:
    """The files a diffusers SDXL pipeline loads: configs, tokenizers, safetensors."""
    name = path.rsplit("/", 1)[-1]
    return name.endswith((".json", ".txt", ".safetensors")) and not name.startswith(".")


def _check_git_blob(path: Path, blob_id: str, name: str, _sha256: str) -> None:
    """Small files are stored in git, not LFS: their id is git's sha1 of the blob."""
    data = path.read_bytes()
    actual = hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()
    if actual != blob_id:
        path.unlink()
        raise DownloadError(f"{name}: git blob {actual} does not match the {blob_id} declared")


def _offset(progress: Progress | None, before: int, total: int) -> Progress | None:
    """Progress over many files as one bar: bytes of earlier files plus this one's."""
    if progress is None:
        return None
    report = progress
    return lambda received, _file_total: report(before + received, total)


def _bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _slug(name: str) -> str:
    stem = re.sub(r"\.(safetensors|ckpt|pt|pth|bin)$", "", name.rsplit("/", 1)[-1])
    return re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:128] or "model"
