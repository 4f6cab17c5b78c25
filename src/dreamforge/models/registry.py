"""Registering models: checking, copying and hashing their files, then recording them in
one step, so the registry never holds an entry whose files are not all in place."""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import re
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamforge.domain.clock import utcnow
from dreamforge.domain.fields import MODEL_ID_PATTERN
from dreamforge.domain.jobs import ModelDefaults, Scheduler
from dreamforge.domain.records import Model, ModelFile
from dreamforge.models.formats import (
    WEIGHT_SUFFIXES,
    UnsupportedModel,
    file_sha256,
    inspect_model,
)
from dreamforge.store.models import ModelRepository

# A model a hosted API renders: no files here.
REMOTE_FORMAT = "remote"

# Tiny models are for tests and demos: small images, few steps, so a CPU answers in a second.
TINY_DEFAULTS = ModelDefaults(
    width=64, height=64, steps=4, guidance_scale=5.0, scheduler=Scheduler.EULER
)


def hash_weights(root: Path) -> tuple[str, list[ModelFile]]:
    """The model's sha256 and its weight files.

    A single-file checkpoint's hash is that file's sha256, as A1111 and CivitAI compute it;
    a diffusers folder's is the sha256 of its sorted ``"path sha256"`` manifest lines.
    """
    if root.is_file():
        digest = file_sha256(root)
        return digest, [ModelFile(root.name, digest, root.stat().st_size)]
    files = [
        ModelFile(str(p.relative_to(root)), file_sha256(p), p.stat().st_size)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES
    ]
    manifest = "".join(f"{f.path} {f.sha256}\n" for f in files)
    return hashlib.sha256(manifest.encode()).hexdigest(), files


class ModelRegistry:
    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def register_local(
        self, model_id: str, path: Path, source: str, defaults: ModelDefaults | None = None
    ) -> Model:
        """Hash the weights first, then write the entry at once: never half-registered."""
        sha256, files = hash_weights(path)
        return self._repository.upsert(
            Model(
                id=model_id,
                source=source,
                path=str(path.resolve()),
                format="single_file" if path.is_file() else "diffusers",
                base="sdxl",
                sha256=sha256,
                size_bytes=sum(f.size_bytes for f in files),
                files=files,
                defaults=defaults or ModelDefaults(),
                status="ready",
                created_at=utcnow(),
            )
        )

    def register_remote(self, model_id: str, source: str) -> Model:
        """A model a hosted image API renders (``replicate:OWNER/NAME[:VERSION]``): no
        files here; its hash is the source's, so that receipts and jobs can name it."""
        if not re.fullmatch(MODEL_ID_PATTERN, model_id):
            raise UnsupportedModel(f"{model_id!r} is not a usable id: letters, digits, . _ -")
        if not re.fullmatch(r"replicate:[\w.-]+/[\w.-]+(:[A-Za-z0-9]+)?", source):
            raise UnsupportedModel(f"{source!r} is not replicate:OWNER/NAME[:VERSION]")
        if self.get(model_id) is not None:
            raise UnsupportedModel(f"a model {model_id!r} is registered already; pick another id")
        return self._repository.upsert(
            Model(
                id=model_id,
                source=source,
                path="",
                format=REMOTE_FORMAT,
                base="sdxl",
                sha256=hashlib.sha256(source.encode()).hexdigest(),
                size_bytes=0,
                files=[],
                defaults=ModelDefaults(),
                status="ready",
                created_at=utcnow(),
                provenance={"provider": source.split(":", 1)[0]},
            )
        )

    def add(
        self,
        source: Path,
        models_dir: Path,
        model_id: str | None = None,
        link: bool = False,
        allow_pickles: bool = False,
    ) -> Model:
        """Register a diffusers folder or a single-file checkpoint: copied into
        ``models_dir`` (or linked where it is), hashed, then recorded; raises
        ``UnsupportedModel`` (and keeps nothing) for anything else."""
        source = source.resolve()
        inspect_model(source, allow_pickles)  # refuse before copying anything
        model_id = model_id or model_id_from(source)
        if not re.fullmatch(MODEL_ID_PATTERN, model_id):
            raise UnsupportedModel(f"{model_id!r} is not a usable id: letters, digits, . _ -")
        if self.get(model_id) is not None:
            raise UnsupportedModel(f"a model {model_id!r} is registered already; pick another id")
        staging = models_dir / f".{model_id}.partial"
        _remove_path(staging)
        try:
            if link:
                staging.parent.mkdir(parents=True, exist_ok=True)
                staging.symlink_to(source) if source.is_dir() else _link_file(staging, source)
            elif source.is_dir():
                shutil.copytree(source, staging)
            else:
                staging.mkdir(parents=True)
                shutil.copy2(source, staging / source.name)
        except BaseException:
            _remove_path(staging)
            raise
        return self.register_staged(
            staging,
            models_dir,
            model_id,
            source=f"file://{source}",
            provenance={"added_from": str(source), "linked": link},
            allow_pickles=allow_pickles,
        )

    def register_staged(
        self,
        staging: Path,
        models_dir: Path,
        model_id: str,
        source: str,
        revision: str | None = None,
        provenance: dict[str, Any] | None = None,
        allow_pickles: bool = False,
    ) -> Model:
        """Move a model assembled in ``staging`` (a diffusers folder, or a folder holding
        one checkpoint) into ``models_dir/model_id`` and record it; on any failure
        nothing of it is kept, in the registry or on disk."""
        home = models_dir / model_id
        if home.exists() or home.is_symlink():
            _remove_path(staging)
            raise UnsupportedModel(f"{home} exists already; remove it or pick another id")
        try:
            checkpoints = [] if _is_diffusers(staging) else list(staging.iterdir())
            if len(checkpoints) > 1:
                raise UnsupportedModel(f"{staging} holds several files and no model_index.json")
            found = inspect_model(checkpoints[0] if checkpoints else staging, allow_pickles)
            staging.rename(home)
            placed = home / checkpoints[0].name if checkpoints else home
            sha256, files = hash_weights(placed)
            return self._repository.upsert(
                Model(
                    id=model_id,
                    source=source,
                    path=str(placed),
                    format=found.format,
                    base=found.architecture,
                    sha256=sha256,
                    size_bytes=sum(f.size_bytes for f in files),
                    files=files,
                    defaults=ModelDefaults(),
                    status="ready",
                    created_at=utcnow(),
                    revision=revision,
                    provenance=provenance or {},
                )
            )
        except BaseException:
            _remove_path(staging)
            _remove_path(home)
            raise

    def verify(self, model_id: str) -> Verification:
        """Hash the files again; the entry becomes ``ready`` if they match what was
        recorded, ``missing`` if any is gone, ``failed`` if any differs."""
        model = self._get_or_raise(model_id)
        recorded = {f.path: f.sha256 for f in model.files}
        root = Path(model.path)
        problems: list[str] = []
        missing = False
        for path, expected in recorded.items():
            file = root / path if root.is_dir() else root
            if not file.is_file():
                problems.append(f"{path}: missing")
                missing = True
            elif (actual := file_sha256(file)) != expected:
                problems.append(f"{path}: sha256 {actual}, expected {expected}")
        status = "missing" if missing else ("failed" if problems else "ready")
        if status != model.status:
            model = self._repository.upsert(dataclasses.replace(model, status=status))
        return Verification(model, problems)

    def remove(self, model_id: str, models_dir: Path) -> Model:
        """Forget the model, and delete its files if they live in ``models_dir`` (a linked
        model's own files stay where they are)."""
        model = self._get_or_raise(model_id)
        self._repository.delete(model_id)
        home = models_dir / model_id
        if home.is_symlink() or home.exists():
            _remove_path(home)
        return model

    def _get_or_raise(self, model_id: str) -> Model:
        model = self.get(model_id)
        if model is None:
            raise UnsupportedModel(f"no model {model_id!r} is registered")
        return model

    def get(self, model_id: str) -> Model | None:
        return self._repository.get(model_id)

    def list(self) -> list[Model]:
        return self._repository.list()


@dataclass(frozen=True)
class Verification:
    model: Model
    problems: list[str]


def model_id_from(source: Path) -> str:
    """A registry id from a file or folder name: ``Juggernaut XL v9.safetensors`` gives
    ``juggernaut-xl-v9``."""
    stem = source.name.removesuffix(".safetensors") if source.is_file() else source.name
    slug = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return slug[:128] or "model"


def _is_diffusers(folder: Path) -> bool:
    return (folder / "model_index.json").is_file()


def _link_file(staging: Path, source: Path) -> None:
    staging.mkdir(parents=True)
    (staging / source.name).symlink_to(source)


def _remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def create_tiny_model(registry: ModelRegistry, models_dir: Path, model_id: str) -> Model:
    """Build the tiny SDXL pipeline into ``models_dir`` and register it.

    It is built in a process of its own: building imports torch, diffusers and
    transformers, which a server that built its default model on first start would
    otherwise carry for as long as it runs (870 MB resident against 105 MB).
    """
    target = models_dir / model_id
    staging = models_dir / f".{model_id}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    spawned = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawned) as builder:
        builder.submit(_write_tiny_sdxl, staging).result()  # re-raises what went wrong
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return registry.register_local(
        model_id, target, source="builtin:tiny-sdxl", defaults=TINY_DEFAULTS
    )


def _write_tiny_sdxl(path: Path) -> None:
    from transformers.utils import logging as transformers_logging

    from dreamforge.models.tiny import write_tiny_sdxl  # imports torch: in the builder only

    transformers_logging.disable_progress_bar()  # a bar a file, in the server's log
    write_tiny_sdxl(path)
