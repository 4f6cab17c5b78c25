"""The compiled runner on the CPU with the tiny model (compile works here too; only the
speed needs a GPU, bench/gpu_runner.py). The first image of a shape never waits for the
compiler; once the background compile is done, that shape runs compiled, with the eager
pixels to within a level; a restarted worker takes its graphs from the cache on disk."""

from __future__ import annotations

import dataclasses
import gc
import io
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch

from dreamforge.artifacts.receipts import read_receipt
from dreamforge.domain.jobs import ModelDefaults
from dreamforge.runners import compile_helper, compiled, process
from dreamforge.runners.compile_helper import CompileHelper, HelperJob, helper_job
from dreamforge.runners.compile_options import CompileOptions, CompileScope
from dreamforge.runners.compiled import CompiledModules
from dreamforge.runners.device import select_device
from dreamforge.runners.process import SdxlProcessRunner
from dreamforge.runners.protocol import (
    ItemRendered,
    ItemToRender,
    ModelLoaded,
    ModelRef,
    RenderRequest,
    RunnerMessage,
    RunnerNote,
    Tick,
)
from dreamforge.runners.sdxl import SdxlRunner
from tests.helpers import tiny_model_ref, tiny_spec

pytestmark = pytest.mark.slow


def pixels(png: bytes) -> np.ndarray:  # type: ignore[type-arg]
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


SPEC = tiny_spec(steps=3, seed=5, item_seeds=(5,))


def render(runner: SdxlRunner, model: Path | ModelRef) -> list[RunnerMessage]:
    """SPEC's one image through ``runner`` with ``model`` (the tiny model in that folder,
    if a folder): every message it sent."""
    ref = tiny_model_ref(model) if isinstance(model, Path) else model
    out: list[RunnerMessage] = []
    runner.generate(RenderRequest(SPEC, ref, (ItemToRender(0, 5),)), out.append, bool)
    return out


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """A compile freezes what the process holds (see runners/compiled.py): not the
    test process's for good."""
    yield
    gc.unfreeze()


def compiled_and_eager(first: list[RunnerMessage], then: list[RunnerMessage]) -> None:
    """``first`` made its image eagerly, ``then`` compiled, within a level of each other."""
    before, after = (next(m for m in out if isinstance(m, ItemRendered)) for out in (first, then))
    assert read_receipt(before.png).compiled is False
    assert read_receipt(after.png).compiled is True
    # Measured here: the same seed, eager and compiled, differ by at most a level.
    assert np.abs(pixels(before.png) - pixels(after.png)).max() <= 2


def under_way(runner: SdxlRunner) -> str:
    """What the compile that the last request asked for compiles, once it has started."""
    assert runner.compiled is not None
    deadline = time.monotonic() + 60
    while (what := runner.compiled.under_way) is None:
        assert time.monotonic() < deadline, "the compile never started"
        time.sleep(0.01)
    return what


@pytest.mark.parametrize(
    ("scope", "vae", "what"),
    # The UNet by regions, the default, goes through the helper in the restart test.
    [("unet", True, "the whole UNet and the VAE decoder")],
)
def test_images_asked_while_a_helper_process_compiles_run_eager_then_compiled_from_its_cache(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scope: CompileScope,
    vae: bool,
    what: str,
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a cold one
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on", scope, vae, tmp_path))
    assert runner.compiled is not None

    render(runner, tiny_model_dir)  # its shape's compile starts once it is done
    assert under_way(runner).endswith("in a helper process")
    during = render(runner, tiny_model_dir)
    # It did not wait: the helper compiles still (for seconds), and nobody was told to wait.
    assert (runner.compiled.under_way or "").endswith("in a helper process")
    assert not [m for m in during if isinstance(m, RunnerNote)]
    runner.compiled.wait()
    # What the compile made is frozen: the collection that settles each request skips it.
    # A job that compiled again in its own time (called otherwise than the warm-up was,
    # under another grad mode, say) would have left graphs of its own in its sight.
    assert not [o for o in gc.get_objects() if isinstance(o, torch.fx.GraphModule)]
    then = render(runner, tiny_model_dir)
    notes = [m.message for m in then if isinstance(m, RunnerNote)]
    told = re.fullmatch(
        rf"compiled {what} for 64x64 x1 \(guided\) in [\d.]+s: in a helper process in [\d.]+s "
        r"\((\d+) graphs compiled, 0 from the cache\) while images ran eager, then here in "
        r"[\d.]+s \((\d+) graphs compiled, (\d+) from the cache\); images of that shape use "
        "it now",
        notes[0] if len(notes) == 1 else str(notes),
    )
    assert told is not None, notes
    # The compile here took every graph from the helper's: none compiled twice.
    assert int(told[1]) > 0 and int(told[2]) == 0 and int(told[3]) == int(told[1]), notes
    compiled_and_eager(during, then)
    assert len(list((tmp_path / "artifacts").glob("*.bin"))) == 1
    runner.compiled.stop()


def test_when_the_helper_fails_the_compile_runs_here_and_an_image_asked_meanwhile_waits(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """...both told, and the image is then compiled."""

    def torn(*args: Any) -> HelperJob:  # the helper cannot read its job, and exits
        return dataclasses.replace(helper_job(*args), modules=b"torn")

    monkeypatch.setattr(compiled, "helper_job", torn)
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on", cache_dir=tmp_path))
    assert runner.compiled is not None

    first = render(runner, tiny_model_dir)
    deadline = time.monotonic() + 60
    while (runner.compiled.under_way or "").endswith("in a helper process") or not (
        runner.compiled.under_way
    ):
        assert time.monotonic() < deadline, "the compile here never started"
        time.sleep(0.01)
    second = render(runner, tiny_model_dir)  # seconds at least: it waits for the compile
    notes = [m.message for m in second if isinstance(m, RunnerNote)]
    assert len(notes) == 2, notes
    assert re.fullmatch(
        r"compiling the UNet by regions for 64x64 x1 \(guided\) in a helper process failed "
        r"\(HelperFailed: exit code 1: \w+Error: .+\); compiling here, images of that shape "
        "wait for it",
        notes[0],
    ), notes
    told = r"waiting for the background compile of the .+, for 64x64 x1 \(guided\), under way"
    assert re.match(told, notes[1]), notes
    runner.compiled.wait()
    notes = [m.message for m in render(runner, tiny_model_dir) if isinstance(m, RunnerNote)]
    assert len(notes) == 1 and "in the background (" in notes[0], notes
    compiled_and_eager(first, second)
    runner.compiled.stop()


def images_of(
    runner: SdxlRunner, model: ModelRef, count: int, max_batch: int | None = None
) -> list[RunnerMessage]:
    """The first ``count`` images of a job of ``max_batch`` (default ``count``), in one
    micro-batch of at most ``max_batch``, compiled or not."""
    most = max_batch or count
    spec = tiny_spec(steps=2, count=most, item_seeds=tuple(range(1, most + 1)))
    items = tuple(ItemToRender(i, 1 + i) for i in range(count))
    out: list[RunnerMessage] = []
    runner.generate(RenderRequest(spec, model, items, max_batch=most), out.append, bool)
    return out


def compiled_note(out: list[RunnerMessage]) -> str:
    [note] = [m.message for m in out if isinstance(m, RunnerNote)]
    return note


def test_every_shape_a_helper_compiles_is_taken_from_its_cache(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runner's twins have graphs of the first shape when they compile the second; the
    helper's, compiled afresh, only that one. Graphs that depended on the shapes before them
    (torch's default: sizes as symbols from a function's second shape on) would differ,
    and the runner would compile its own while jobs wait."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # a cold one
    # As in a new worker: graphs that earlier tests compiled in this process would serve
    # the runner's twins without a look at the cache.
    torch._dynamo.reset()
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on", cache_dir=tmp_path))
    assert runner.compiled is not None
    model = tiny_model_ref(tiny_model_dir)
    for batch in (1, 2):
        images_of(runner, model, batch)
        runner.compiled.wait()
        note = compiled_note(images_of(runner, model, batch))
        told = re.search(
            r"then here in [\d.]+s \((\d+) graphs compiled, (\d+) from the cache\)", note
        )
        assert told is not None and f"64x64 x{batch} (guided)" in note, note
        assert int(told[1]) == 0 and int(told[2]) > 0, note
    runner.compiled.stop()


def test_a_shape_past_the_most_a_process_keeps_stays_eager_and_says_so(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compiled, "MAX_SHAPES", 1)
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on"))
    assert runner.compiled is not None
    model = tiny_model_ref(tiny_model_dir)
    images_of(runner, model, 1)
    runner.compiled.wait()
    assert "images of that shape use it now" in compiled_note(images_of(runner, model, 1))
    images_of(runner, model, 2)
    runner.compiled.wait()
    told, again = images_of(runner, model, 2), images_of(runner, model, 2)
    assert compiled_note(told) == (
        "the UNet by regions not compiled for 64x64 x2 (guided): this process has graphs "
        "for 1 shapes, the most it keeps; images of that shape stay eager"
    )
    assert not [m for m in again if isinstance(m, RunnerNote)]  # said once
    for image in (m for m in told + again if isinstance(m, ItemRendered)):
        assert read_receipt(image.png).compiled is False
    runner.compiled.stop()


def test_a_preload_compiles_for_one_image_of_the_models_defaults_once_the_runner_is_idle(
    tiny_model_dir: Path,
) -> None:
    """Not at once: a job sent while the model loaded comes the moment the preload ends,
    and would wait for the compile (4.9 s on the H200 from a warm cache) to save a
    fraction of its own render."""
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on"))
    assert runner.compiled is not None
    defaults = ModelDefaults(width=64, height=64, steps=3, guidance_scale=5.0)
    preload = RenderRequest(None, tiny_model_ref(tiny_model_dir), (), defaults=defaults)
    runner.generate(preload, [].append, bool)
    runner.compiled.wait()  # nothing under way
    first = render(runner, tiny_model_dir)  # SPEC: one 64x64 image, guided
    assert not [m for m in first if isinstance(m, RunnerNote)]
    assert read_receipt(next(m for m in first if isinstance(m, ItemRendered)).png).compiled is False

    runner.compiled.stop()

    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on"))
    assert runner.compiled is not None
    runner.generate(preload, [].append, bool)
    runner.idle()  # no job came
    runner.compiled.wait()
    then = render(runner, tiny_model_dir)
    assert re.fullmatch(
        r"compiled the UNet by regions for 64x64 x1 \(guided\) in [\d.]+s in the background "
        r"\(.*\); images of that shape use it now",
        compiled_note(then),
    )
    assert read_receipt(next(m for m in then if isinstance(m, ItemRendered)).png).compiled is True
    runner.compiled.stop()


def test_a_shape_a_job_asked_for_compiles_before_the_one_a_preload_foresaw(
    tiny_model_dir: Path,
) -> None:
    """A job that came while the model loaded is of a shape someone uses; the preload's
    is a guess. On the H200 each compile is seconds from a warm cache, minutes cold."""
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on"))
    assert runner.compiled is not None
    defaults = ModelDefaults(width=64, height=64, steps=3, guidance_scale=5.0)
    runner.generate(
        RenderRequest(None, tiny_model_ref(tiny_model_dir), (), defaults=defaults),
        [].append,
        bool,
    )
    unguided = SPEC.model_copy(update={"guidance_scale": 1.0})
    request = RenderRequest(unguided, tiny_model_ref(tiny_model_dir), (ItemToRender(0, 5),))
    runner.generate(request, [].append, bool)  # its end starts the compiles
    runner.compiled.wait()
    notes = runner.compiled.take_notes()
    runner.compiled.stop()
    assert [re.sub(r" in .*", "", note) for note in notes] == [
        "compiled the UNet by regions for 64x64 x1",
        "compiled the UNet by regions for 64x64 x1 (guided)",
    ], notes


def test_a_runner_process_starts_the_preloads_compile_when_no_request_comes(
    tiny_model_dir: Path,
) -> None:
    runner = SdxlProcessRunner("cpu", compiling=CompileOptions("on"))
    defaults = ModelDefaults(width=64, height=64, steps=3, guidance_scale=5.0)
    request = RenderRequest(SPEC, tiny_model_ref(tiny_model_dir), (ItemToRender(0, 5),))
    out: list[RunnerMessage] = []
    try:
        runner.preload(request.model, defaults)
        time.sleep(process.IDLE_AFTER_S + 8)  # the child's start (~5 s here), the load, idle
        runner.render(request, out.append, lambda: Tick.CONTINUE)
    finally:
        runner.stop()
    # It waited for the compile under way, or found it done: either way compiled.
    assert read_receipt(next(m for m in out if isinstance(m, ItemRendered)).png).compiled, out


def test_a_helper_that_does_not_answer_in_time_is_killed_and_the_compile_runs_here(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hung helper would hold the compile thread, and every later shape's compile."""
    monkeypatch.setattr(compile_helper, "HELPER_LIMIT_S", 1.0)
    hung = (sys.executable, "-c", "import time; time.sleep(300)")
    monkeypatch.setattr(CompileHelper, "command", hung)
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on", cache_dir=tmp_path))
    assert runner.compiled is not None
    render(runner, tiny_model_dir)
    runner.compiled.wait()
    notes = [m.message for m in render(runner, tiny_model_dir) if isinstance(m, RunnerNote)]
    assert notes[0] == (
        "compiling the UNet by regions for 64x64 x1 (guided) in a helper process failed "
        "(HelperFailed: no answer within 1s; killed); compiling here, images of that shape "
        "wait for it"
    ), notes
    assert "in the background (" in notes[1], notes
    children = psutil.Process().children(recursive=True)
    assert not [p for p in children if "sleep(300)" in " ".join(p.cmdline())]  # killed
    runner.compiled.stop()


def test_a_restarted_worker_compiles_from_its_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    def a_worker_life() -> list[str]:
        runner = SdxlProcessRunner("cpu", compiling=CompileOptions("on", cache_dir=tmp_path))
        request = RenderRequest(SPEC, tiny_model_ref(tiny_model_dir), (ItemToRender(0, 5),))
        notes: list[str] = []

        def keep(message: RunnerMessage) -> None:
            if isinstance(message, RunnerNote) and message.message.startswith("compiled "):
                notes.append(message.message)

        try:
            runner.render(request, keep, lambda: Tick.CONTINUE)  # starts the compile
            while not notes:  # the note comes with a later request, once compiled
                time.sleep(0.5)  # not every moment: the compile needs the CPU too
                runner.render(request, keep, lambda: Tick.CONTINUE)
        finally:
            runner.stop()
        return notes

    cold, warm = a_worker_life(), a_worker_life()
    # (compiled, from the cache): the first life's in its helper process, then in its own;
    # the second life's in its own only, the cache listing the shape as compiled before.
    graphs = re.compile(r"\((\d+) graphs compiled, (\d+) from the cache\)")
    (helper, here), (again,) = (
        [(int(c), int(k)) for c, k in graphs.findall(n[0])] for n in (cold, warm)
    )
    assert helper[0] > 0 and here == (0, helper[0]), cold
    assert again == (0, helper[0]) and "in the background" in warm[0], warm


def test_a_failed_compile_is_told_and_its_shape_stays_eager(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def give_up(*_: object, **__: object) -> None:
        raise RuntimeError("the compiler gave up")

    monkeypatch.setattr(torch.nn.Module, "compile", give_up)  # a compiler that fails
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on"))
    assert runner.compiled is not None

    render(runner, tiny_model_dir)
    runner.compiled.wait()  # raises nothing: the failure is the job log's to tell
    told, again = render(runner, tiny_model_dir), render(runner, tiny_model_dir)
    assert [m.message for m in told if isinstance(m, RunnerNote)] == [
        "compiling the UNet by regions for 64x64 x1 (guided) failed (RuntimeError: the "
        "compiler gave up); images of that shape stay eager"
    ]
    assert not [m for m in again if isinstance(m, RunnerNote)]  # not tried again
    for out in (told, again):
        image = next(m for m in out if isinstance(m, ItemRendered))
        assert read_receipt(image.png).compiled is False
    runner.compiled.stop()


def test_a_job_that_makes_the_compiled_unet_compile_again_is_told(tiny_model_dir: Path) -> None:
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on"))
    assert runner.compiled is not None
    render(runner, tiny_model_dir)
    runner.compiled.wait()
    render(runner, tiny_model_dir)  # compiled, and the compile's own note taken
    with torch.inference_mode():  # not the grad mode the graphs were made for
        odd = render(runner, tiny_model_dir)
    notes = [m.message for m in odd if isinstance(m, RunnerNote)]
    assert len(notes) == 1, notes
    assert re.fullmatch(
        r"the UNet by regions compiled again for this job's 64x64 x1 \(guided\) \(\d+ graphs; "
        r"TORCH_LOGS=recompiles says why\)",
        notes[0],
    ), notes
    runner.compiled.stop()


def one_at_a_time(
    tiny_model_dir: Path, compiling: CompileOptions
) -> tuple[SdxlRunner, ModelRef, ModelRef]:
    """A runner, and two models of which its memory budget holds one at a time."""
    unet_file = "unet/diffusion_pytorch_model.safetensors"
    size = (tiny_model_dir / unet_file).stat().st_size
    first = dataclasses.replace(tiny_model_ref(tiny_model_dir), files=((unet_file, size),))
    second = dataclasses.replace(first, id="tiny-again")
    runner = SdxlRunner(select_device("cpu"), memory_budget_bytes=size, compiling=compiling)
    return runner, first, second


def unet_weights(runner: SdxlRunner, model: ModelRef) -> list[weakref.ref[torch.Tensor]]:
    resident = runner._resident.get(model.id, model.sha256)
    assert resident is not None
    return [weakref.ref(weight) for weight in resident.pipe.unet.parameters()]


def assert_let_go(weights: list[weakref.ref[torch.Tensor]]) -> None:
    held = [weight() for weight in weights if weight() is not None]
    assert not held, f"{len(held)} of the unloaded model's {len(weights)} weights are still held"


def test_a_model_unloaded_for_another_takes_its_compiled_twins_with_it(
    tiny_model_dir: Path,
) -> None:
    """The twins hold the model's very weights: kept, they would keep them in memory (on
    a GPU, device memory that the budget counts as given back)."""
    runner, first, second = one_at_a_time(tiny_model_dir, CompileOptions("on"))
    assert runner.compiled is not None
    render(runner, first)
    runner.compiled.wait()
    assert "compiled the UNet" in " ".join(
        m.message for m in render(runner, first) if isinstance(m, RunnerNote)
    )
    weights = unet_weights(runner, first)
    loaded = [m for m in render(runner, second) if isinstance(m, ModelLoaded)]
    assert loaded[0].evicted == (first.id,)
    assert_let_go(weights)
    runner.compiled.stop()


def test_a_model_unloaded_while_a_helper_compiles_for_it_is_let_go_at_once(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """...not when the compile ends (minutes, for a whole UNet on a GPU)."""
    runner, first, second = one_at_a_time(tiny_model_dir, CompileOptions("on", cache_dir=tmp_path))
    assert runner.compiled is not None
    render(runner, first)
    assert under_way(runner).endswith("in a helper process")
    weights = unet_weights(runner, first)
    loaded = [m for m in render(runner, second) if isinstance(m, ModelLoaded)]
    assert loaded[0].evicted == (first.id,)
    assert (runner.compiled.under_way or "").endswith("in a helper process")  # still at it
    assert_let_go(weights)
    runner.compiled.stop()


def test_a_restarted_worker_loads_its_cache_on_the_compile_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not before its first image: loading the artifacts takes about a second here."""
    loaded: list[tuple[bytes, str]] = []

    def load(data: bytes) -> None:
        loaded.append((data, threading.current_thread().name))

    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", load)
    (tmp_path / "artifacts").mkdir()
    for compile in ("a", "b"):
        (tmp_path / "artifacts" / f"{compile}.bin").write_bytes(f"compile {compile}".encode())
    modules = CompiledModules(CompileOptions("on", cache_dir=tmp_path))
    modules.wait()
    modules.stop()
    assert [data for data, _ in loaded] == [b"compile a", b"compile b"]
    assert all(thread.startswith("dreamforge-compile") for _, thread in loaded), loaded


def test_a_batch_of_three_runs_compiled_as_a_batch_of_four(tiny_model_dir: Path) -> None:
    """Compiled sizes are 1, 2, 4, 8…: three items pad to four, and only three come back."""
    runner = SdxlRunner(select_device("cpu"), compiling=CompileOptions("on"))
    assert runner.compiled is not None
    model = tiny_model_ref(tiny_model_dir)

    def rendered(count: int) -> list[ItemRendered]:
        out = images_of(runner, model, count, max_batch=4)
        return [m for m in out if isinstance(m, ItemRendered)]

    eager = rendered(4)  # compiles the 4-item shape once it is done
    runner.compiled.wait()
    three = rendered(3)
    assert [m.item_index for m in three] == [0, 1, 2]
    assert all(read_receipt(m.png).compiled for m in three)
    for got, want in zip(three, eager, strict=False):
        assert np.abs(pixels(got.png) - pixels(want.png)).max() <= 2
    runner.compiled.stop()
