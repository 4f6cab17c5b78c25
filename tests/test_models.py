"""Bringing a model of one's own: `dreamforge model add | show | verify | remove`."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dreamforge.cli import app
from dreamforge.config import Settings
from dreamforge.domain.errors import ErrorCode
from dreamforge.models.formats import SD1_KEY
from dreamforge.models.registry import ModelRegistry
from dreamforge.runners.device import select_device
from dreamforge.runners.process import SdxlProcessRunner
from dreamforge.runners.protocol import (
    Failed,
    ItemToRender,
    ModelLoaded,
    ModelRef,
    RenderRequest,
    Tick,
)
from dreamforge.runners.sdxl import ModelUnusable, SdxlRunner
from dreamforge.store.db import Database
from dreamforge.store.models import ModelRepository
from tests.helpers import tiny_spec
from tests.test_pipeline import assert_renders_like

cli = CliRunner()


def registry(data_dir: Path) -> ModelRegistry:
    db = Database(Settings(data_dir=data_dir).resolved_database_url)  # type: ignore[call-arg]
    db.upgrade()
    return ModelRegistry(ModelRepository(db))


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = cli.invoke(app, ["model", *args], env=env)
    return result.exit_code, result.output


def safetensors_with(path: Path, *keys: str) -> Path:
    """A real safetensors file holding one tiny tensor under each name."""
    header = {
        k: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]}
        for i, k in enumerate(keys)
    }
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4 * len(keys))
    return path


def file_with(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def test_an_added_diffusers_folder_is_copied_hashed_and_renders(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    code, output = run("add", str(tiny_model_dir), "--id", "my-sdxl", "--data-dir", str(data))
    assert code == 0, output
    model = registry(data).get("my-sdxl")
    assert model is not None and model.status == "ready"
    assert (model.format, model.base) == ("diffusers", "sdxl")
    assert Path(model.path) == data / "models" / "my-sdxl"
    assert not (data / "models" / "my-sdxl").is_symlink()
    unet = Path(model.path) / "unet" / "diffusion_pytorch_model.safetensors"
    recorded = {f.path: f.sha256 for f in model.files}
    assert (
        recorded["unet/diffusion_pytorch_model.safetensors"]
        == hashlib.sha256(unet.read_bytes()).hexdigest()
    )
    assert model.provenance["added_from"] == str(tiny_model_dir.resolve())

    assert_renders_like(model, tiny_model_dir)  # what was registered is what renders

    shown = run("show", "my-sdxl", "--data-dir", str(data))[1]
    assert "unet/diffusion_pytorch_model.safetensors" in shown and model.sha256 in shown
    assert "my-sdxl" in run("list", "--data-dir", str(data))[1]


def test_a_linked_model_stays_where_it_is_and_survives_its_removal(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data, source = tmp_path / "data", tmp_path / "elsewhere"
    shutil.copytree(tiny_model_dir, source)
    code, output = run("add", str(source), "--link", "--data-dir", str(data))
    assert code == 0, output
    assert (data / "models" / "elsewhere").is_symlink()  # the id comes from the name
    assert registry(data).get("elsewhere") is not None
    assert run("remove", "elsewhere", "--data-dir", str(data))[0] == 0
    assert registry(data).get("elsewhere") is None
    assert not (data / "models" / "elsewhere").exists()
    assert (source / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_verify_finds_a_changed_or_missing_file_and_the_model_stops_being_ready(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    assert run("add", str(tiny_model_dir), "--id", "m", "--data-dir", str(data))[0] == 0
    vae = data / "models" / "m" / "vae" / "diffusion_pytorch_model.safetensors"
    original = vae.read_bytes()
    assert run("verify", "m", "--data-dir", str(data))[0] == 0

    vae.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    code, output = run("verify", "m", "--data-dir", str(data))
    assert code == 1 and "vae/diffusion_pytorch_model.safetensors: sha256" in output
    model = registry(data).get("m")
    assert model is not None and model.status == "failed"

    vae.unlink()
    code, output = run("verify", "m", "--data-dir", str(data))
    assert code == 1 and "missing" in output
    assert registry(data).get("m").status == "missing"  # type: ignore[union-attr]

    vae.write_bytes(original)
    assert run("verify", "m", "--data-dir", str(data))[0] == 0
    assert registry(data).get("m").status == "ready"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: safetensors_with(d / "sd15.safetensors", SD1_KEY), "SD 1.x"),
        (lambda d: safetensors_with(d / "mystery.safetensors", "a.weight"), "unknown"),
        (lambda d: file_with(d / "junk.safetensors", b"\x05"), "not a safetensors file"),
        (lambda d: file_with(d / "old.ckpt", b"pickle"), "pickled"),
        (lambda d: file_with(d / "notes.txt", b"hi"), "neither"),
    ],
    ids=["sd15", "unknown", "junk", "ckpt", "text"],
)
def test_what_is_not_an_sdxl_safetensors_model_is_refused_and_nothing_is_kept(
    tmp_path: Path, make: object, message: str
) -> None:
    data = tmp_path / "data"
    source = make(tmp_path)  # type: ignore[operator]
    code, output = run("add", str(source), "--data-dir", str(data))
    assert code == 1 and message in output, output
    assert registry(data).list() == []
    assert not (data / "models").exists() or list((data / "models").iterdir()) == []


def test_an_sd15_folder_and_pickled_weights_are_refused_unless_allowed(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    sd15 = tmp_path / "sd15"
    shutil.copytree(tiny_model_dir, sd15)
    index = json.loads((sd15 / "model_index.json").read_text())
    (sd15 / "model_index.json").write_text(
        json.dumps({**index, "_class_name": "StableDiffusionPipeline"})
    )
    code, output = run("add", str(sd15), "--data-dir", str(data))
    assert code == 1 and "SD 1.x" in output and "not supported yet" in output

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    code, output = run("add", str(pickled), "--data-dir", str(data))
    assert code == 1 and "DREAMFORGE_ALLOW_PICKLED_WEIGHTS" in output
    assert registry(data).list() == []
    allowed = {"DREAMFORGE_ALLOW_PICKLED_WEIGHTS": "true"}
    assert run("add", str(pickled), "--data-dir", str(data), env=allowed)[0] == 0


def test_an_id_is_never_taken_twice(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "data"
    assert run("add", str(tiny_model_dir), "--id", "twice", "--data-dir", str(data))[0] == 0
    code, output = run("add", str(tiny_model_dir), "--id", "twice", "--data-dir", str(data))
    assert code == 1 and "registered already" in output
    code, output = run("add", str(tiny_model_dir), "--id", "../escape", "--data-dir", str(data))
    assert code == 1 and "not a usable id" in output


def test_a_model_whose_files_changed_fails_to_load_with_model_not_ready(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    assert run("add", str(tiny_model_dir), "--id", "m", "--data-dir", str(data))[0] == 0
    model = registry(data).get("m")
    assert model is not None
    spec = tiny_spec(prompt="a fox", steps=1, seed=1, model_id="m")
    request = RenderRequest(spec, ModelRef.of(model), (ItemToRender(0, 1),))
    unet = Path(model.path) / "unet" / "diffusion_pytorch_model.safetensors"
    original = unet.read_bytes()

    unet.write_bytes(original[:-10])
    with pytest.raises(
        ModelUnusable, match=r"unet/diffusion_pytorch_model.safetensors has changed"
    ):
        SdxlRunner(select_device("cpu")).generate(request, lambda _: None, bool)
    unet.write_bytes(b"\xff" * len(original))  # same size, not a safetensors file any more
    with pytest.raises(ModelUnusable, match="could not be loaded") as raised:
        SdxlRunner(select_device("cpu")).generate(request, lambda _: None, bool)
    assert "dreamforge model verify m" in str(raised.value)

    unet.unlink()  # and through the runner's child process, as a job meets it
    runner = SdxlProcessRunner()
    try:
        outcome = runner.render(request, lambda _: None, lambda: Tick.CONTINUE)
    finally:
        runner.stop()
    assert isinstance(outcome, Failed) and outcome.code is ErrorCode.MODEL_NOT_READY
    assert outcome.message == "model m: unet/diffusion_pytorch_model.safetensors is missing"


def test_resident_pipelines_stay_loaded_within_their_budget(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = tmp_path / "data"
    for name in ("a", "b", "c"):
        assert (
            run("add", str(tiny_model_dir), "--id", name, "--link", "--data-dir", str(data))[0] == 0
        )
    models = {m.id: ModelRef.of(m) for m in registry(data).list()}
    size = sum(s for _, s in models["a"].files)

    def load(runner: SdxlRunner, model_id: str) -> bool:
        loaded = [m for m in _messages(runner, models[model_id]) if isinstance(m, ModelLoaded)]
        return loaded[0].cached

    two = SdxlRunner(select_device("cpu"), memory_budget_bytes=2 * size + 1)
    assert [load(two, m) for m in ("a", "b", "a", "c", "a", "b")] == [
        False,  # a
        False,  # b
        True,  # a, resident
        False,  # c: b, the least recently used, makes room
        True,  # a, still resident
        False,  # b, unloaded for c
    ]
    one = SdxlRunner(select_device("cpu"), memory_budget_bytes=size)
    assert [load(one, m) for m in ("a", "a", "b", "a")] == [False, True, False, False]


def _messages(runner: SdxlRunner, model: ModelRef) -> list[object]:
    out: list[object] = []
    runner.generate(RenderRequest(None, model, ()), out.append, bool)
    return out
