"""Registering models: hashing their files and recording them in one step."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from dreamforge.domain.clock import utcnow
from dreamforge.domain.jobs import ModelDefaults, Scheduler
from dreamforge.domain.records import Model, ModelFile
from dreamforge.store.models import ModelRepository

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt")

# Tiny models are for tests and demos: small images, few steps, so a CPU answers in a second.
TINY_DEFAULTS = ModelDefaults(
    width=64, height=64, steps=4, guidance_scale=5.0, scheduler=Scheduler.EULER
)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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

    def get(self, model_id: str) -> Model | None:
        return self._repository.get(model_id)

    def list(self) -> list[Model]:
        return self._repository.list()


def create_tiny_model(registry: ModelRegistry, models_dir: Path, model_id: str) -> Model:
    """Build the tiny SDXL pipeline into ``models_dir`` and register it."""
    from dreamforge.models.tiny import write_tiny_sdxl  # imports torch; only when asked

    target = models_dir / model_id
    staging = models_dir / f".{model_id}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    write_tiny_sdxl(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return registry.register_local(
        model_id, target, source="builtin:tiny-sdxl", defaults=TINY_DEFAULTS
    )
