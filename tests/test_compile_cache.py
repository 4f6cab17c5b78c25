"""What the compile cache on disk says it holds (``compiled.txt``): a listing a compile,
by the modules' code and architecture, so that a model of the same architecture, read
from any folder, compiles from the cache without a helper process; and the artifacts
saved beside it, which keep every life's graphs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from diffusers import StableDiffusionXLPipeline

from dreamforge.runners.compile_cache import compile_listing
from dreamforge.runners.twins import Shape

SHAPE = Shape(64, 64, 1, guided=True)


def listing(model_dir: Path) -> str:
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir, local_files_only=True)
    return compile_listing(pipe, "the UNet by regions", SHAPE)


def test_the_same_architecture_read_from_another_folder_is_listed_alike(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    elsewhere = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    assert listing(elsewhere) == listing(tiny_model_dir)


def test_another_architecture_is_listed_apart(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = shutil.copytree(tiny_model_dir, tmp_path / "other")
    config_file = other / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["upcast_attention"] = not config.get("upcast_attention", False)  # same weights
    config_file.write_text(json.dumps(config))
    assert listing(other) != listing(tiny_model_dir)


# A worker's life, in a process of its own: load the saved artifacts, compile a small
# function for each name given (torch.sin, …), save after each as the runner does, and
# print how many graphs it compiled and how many it took from the cache.
A_LIFE = """
import sys
from pathlib import Path

import torch
from torch._dynamo.utils import counters

from dreamforge.runners.compile_cache import CompileCache
from dreamforge.runners.compile_options import CompileOptions

cache = CompileCache(CompileOptions("on", cache_dir=Path(sys.argv[1])))
cache.load()
for name in sys.argv[2:]:
    op = getattr(torch, name)
    torch.compile(lambda x: op(x) * 3 + 1, dynamic=False)(torch.ones(8))
    cache.save(f"{name} of 8 floats")
graphs = counters["inductor"]
print(graphs["fxgraph_cache_miss"], "compiled,", graphs["fxgraph_cache_hit"], "from the cache")
"""


def a_life(cache_dir: Path, inductor_dir: Path, *names: str) -> str:
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
    done = subprocess.run(
        [sys.executable, "-c", A_LIFE, str(cache_dir), *names],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def without_graphs(inductor: Path, copy: Path) -> Path:
    """A copy of inductor's cache without its graphs: what else it keeps there is left,
    to save the seconds it takes to make."""
    shutil.copytree(inductor, copy)
    for graphs in ("fxgraph", "aotautograd"):
        assert (copy / graphs).is_dir()  # where inductor keeps them, or the test is void
        shutil.rmtree(copy / graphs)
    return copy


@pytest.mark.slow
def test_a_restarted_worker_keeps_the_graphs_of_every_earlier_compile(tmp_path: Path) -> None:
    """The third life finds its graphs in the saved artifacts only: both of the first
    life's, saved one after the other by one process, which the second did not use."""
    cache_dir, inductor = tmp_path / "compile-cache", tmp_path / "inductor"
    assert a_life(cache_dir, inductor, "sin", "cos") == "2 compiled, 0 from the cache"
    assert a_life(cache_dir, inductor, "tan") == "1 compiled, 0 from the cache"
    third = without_graphs(inductor, tmp_path / "third")
    assert a_life(cache_dir, third, "sin", "cos") == "0 compiled, 2 from the cache"
    assert (cache_dir / "compiled.txt").read_text().splitlines() == [
        "sin of 8 floats",
        "cos of 8 floats",
        "tan of 8 floats",
    ]
