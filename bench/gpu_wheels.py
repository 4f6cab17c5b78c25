"""Wheels for running the GPU benchmarks on a machine that has PyTorch but no package index
(a lent GPU machine): Dream Forge's dependencies with its ``render`` extra, at the versions
installed in this checkout's environment, for the machine's Python, saved in ``.whl/``.

Left out: torch, torchvision, triton and the CUDA libraries (the machine's own build),
numpy (which that torch was built against), and what ``bench/gpu_machine_packages.txt``
lists as there already. The Hugging Face stack is carried whatever the machine has, at
the versions the tests ran with. Dream Forge itself runs from ``src/``.

    python -m bench.gpu_wheels                # wheels for Python 3.12 into .whl/
    python -m bench.gpu_wheels --python 3.11  # another Python

    # on the GPU machine, in the checkout:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:src python3 -m bench.gpu_runner --budget-s 420
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
THE_MACHINES_OWN = ("torch", "torchvision", "triton", "numpy", "nvidia-", "cuda-")
# Carried even where the machine has them: the versions diffusers and our tests agree on.
HUGGING_FACE = {"diffusers", "transformers", "huggingface-hub", "tokenizers", "accelerate",
                "safetensors", "hf-xet"}  # fmt: skip
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")  # fmt: skip


def needed(python: str) -> dict[str, str]:
    """Every distribution Dream Forge with ``render`` needs on Linux and ``python``, by
    name, at the version installed here."""
    marker_env = {"python_version": python, "python_full_version": f"{python}.0",
                  "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
                  "platform_machine": "x86_64", "implementation_name": "cpython",
                  "platform_python_implementation": "CPython"}  # fmt: skip
    found: dict[str, tuple[str, set[str]]] = {}
    todo: list[tuple[str, set[str]]] = [("dreamforge", {"render"})]
    while todo:
        name, extras = todo.pop()
        installed = distribution(name)
        key = canonicalize_name(installed.metadata["Name"])
        known = found.get(key)
        if known is not None and extras <= known[1]:
            continue
        found[key] = (installed.version, extras | (known[1] if known else set()))
        for line in installed.requires or []:
            requirement = Requirement(line)
            marker = requirement.marker
            wanted = (marker_env | {"extra": extra} for extra in {"", *extras})
            if marker and not any(marker.evaluate(env) for env in wanted):
                continue
            try:
                distribution(requirement.name)
            except PackageNotFoundError:
                continue  # an optional part no one installed here: not needed either
            todo.append((requirement.name, set(requirement.extras)))
    found.pop("dreamforge")
    return {name: version for name, (version, _) in found.items()}


def to_carry(python: str) -> dict[str, str]:
    there = {
        canonicalize_name(line.strip())
        for line in (ROOT / "bench" / "gpu_machine_packages.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    return {
        name: version
        for name, version in sorted(needed(python).items())
        if not name.startswith(THE_MACHINES_OWN) and (name in HUGGING_FACE or name not in there)
    }


def main() -> None:
    python = sys.argv[sys.argv.index("--python") + 1] if "--python" in sys.argv else "3.12"
    carried = to_carry(python)
    out = ROOT / ".whl"
    out.mkdir(exist_ok=True)
    platforms = [f"--platform={p}" for p in PLATFORMS]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--only-binary=:all:", f"--python-version={python}",
         "--implementation=cp", *platforms, "--dest", str(out),
         *(f"{name}=={version}" for name, version in carried.items())],
        check=True,
    )  # fmt: skip
    wheels = sorted(out.glob("*.whl"))
    megabytes = sum(w.stat().st_size for w in wheels) / 2**20
    print(f"{len(carried)} distributions for Python {python}, {megabytes:.0f} MB in {out}:")
    print(" ".join(f"{name}=={version}" for name, version in carried.items()))


if __name__ == "__main__":
    main()
