"""UNets (and optionally VAE decoders) compiled in the background, so that the first
image of a shape never waits for the compiler: the UNet by regions (diffusers'
``compile_repeated_blocks``: one transformer block compiled and reused; seconds) or whole
(one graph; minutes, fewer kernel launches).

A job of a shape with no compiled graph yet is denoised eagerly; once its request is
done, a thread compiles and warms twins of the model's UNet (and VAE) for that shape: a
twin shares its module's weights (no second copy on the device) and has its own compiled
parts. From then on, jobs of that shape use the twins. Compiled artifacts go to a cache
on disk (inductor's, and ``torch.compiler.save_cache_artifacts``), so that a restarted
worker does not compile again from scratch.

Compiling and running modules at the same time is not safe in torch (its tracer patches
``Module.__call__`` for every thread while it traces), so a compile and a denoise never
overlap: a job that arrives while a compile runs waits for it (once per shape: seconds
by regions or from the cache, minutes for a whole UNet on a cold cache), and is told so.
"""

from __future__ import annotations

import copy
import gc
import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

from dreamforge.runners.compile_options import CompileOptions


@dataclass(frozen=True)
class Shape:
    """What a compiled graph is specialised to: a change of any of these recompiles."""

    width: int
    height: int
    batch: int
    guided: bool  # classifier-free guidance doubles the UNet's batch

    def __str__(self) -> str:
        return f"{self.width}x{self.height} x{self.batch}{' (guided)' if self.guided else ''}"


@dataclass
class _Twins:
    """One model's compiled twins, made at its first compile."""

    sha256: str
    modules: dict[str, Any]  # the pipeline's component name -> its compiled twin
    shapes: set[Shape]  # warm: compiled for these
    pending: set[Shape]  # asked for, not warm yet


def bucket_size(items: int) -> int:
    """The compiled batch size that holds ``items``: the next power of two."""
    return 1 << max(items - 1, 0).bit_length()


def shared_twin(module: torch.nn.Module) -> Any:
    """A copy of ``module``'s modules holding the very same weight tensors."""
    memo: dict[int, Any] = {
        id(t): t for t in itertools.chain(module.parameters(), module.buffers())
    }
    return copy.deepcopy(module, memo)


class CompiledModules:
    def __init__(self, options: CompileOptions) -> None:
        self._options = options
        self._artifacts = options.artifacts
        self._twins: dict[str, _Twins] = {}
        self._lock = threading.Lock()  # guards the bookkeeping
        self._running = threading.Lock()  # held by a denoise or a compile, never both
        self._wanted: list[tuple[_Twins, StableDiffusionXLPipeline, Shape]] = []
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix="dreamforge-compile")
        self._futures: list[Future[None]] = []
        self._notes: list[str] = []  # what finished since they were last taken
        self._under_way: tuple[str, float] | None = None  # the compile running, since when
        self._parts = "the whole UNet" if options.scope == "unet" else "the UNet by regions"
        if options.vae:
            self._parts += " and the VAE decoder"
        if self._artifacts is not None and self._artifacts.is_file():
            # On the compile thread, ahead of any compile: loading them (and importing the
            # compiler) takes a second or more, which the first image must not wait for.
            self._futures.append(self._compiler.submit(self._load_artifacts, self._artifacts))

    def forget(self, model_ids: Iterable[str]) -> None:
        """Let go of the twins of models that were unloaded: they hold the very same
        weights, which would otherwise stay in (device) memory."""
        with self._lock:
            dropped = [self._twins.pop(m) for m in model_ids if m in self._twins]
            self._wanted = [w for w in self._wanted if w[0] not in dropped]
        if dropped:
            del dropped
            # A compiled module refers to itself, so only the collector frees it, and what
            # a compile made was frozen out of its sight (see _compile): unfrozen for one
            # full collection, the rare price of unloading a model, then frozen again.
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    @staticmethod
    def _load_artifacts(artifacts: Path) -> None:
        torch.compiler.load_cache_artifacts(artifacts.read_bytes())

    def take_notes(self) -> list[str]:
        with self._lock:
            notes, self._notes = self._notes, []
            return notes

    def wait(self) -> None:
        """Until every compile asked for so far has finished (tests, benchmarks)."""
        for future in list(self._futures):
            future.result()

    @property
    def under_way(self) -> str | None:
        """What the compile that runs now compiles, if one does."""
        found = self._under_way
        return found[0] if found else None

    @contextmanager
    def modules_for(
        self,
        model_id: str,
        sha256: str,
        pipe: StableDiffusionXLPipeline,
        shape: Shape,
        tell: Callable[[str], None],
    ) -> Iterator[dict[str, Any]]:
        """The compiled twins by component name (``unet``, ``vae``) if they are warm for
        ``shape``; else none, and the shape is wanted (``compile_wanted`` starts it).

        ``tell`` hears, for the job's log, what is out of the ordinary: that a compile
        runs, which this waits for; that the twins compiled again while the job used them
        (their graphs' guards failed: rare by design, and each such compile costs the job
        its time)."""
        if not self._running.acquire(blocking=False):
            under_way = self._under_way
            if under_way is not None:
                what, since = under_way
                tell(
                    f"waiting for the background compile of {what}, under way for "
                    f"{time.monotonic() - since:.0f}s (once per shape)"
                )
            self._running.acquire()
        try:
            with self._lock:
                twins = self._twins.get(model_id)
                if twins is None or twins.sha256 != sha256:
                    twins = _Twins(sha256, {}, set(), set())
                    self._twins[model_id] = twins
                warm = shape in twins.shapes
                if not warm and shape not in twins.pending:
                    twins.pending.add(shape)
                    self._wanted.append((twins, pipe, shape))
            before = _dynamo_graphs()
            yield twins.modules if warm else {}
            again = _dynamo_graphs() - before
            if warm and again:
                tell(
                    f"{self._parts} compiled again for this job's {shape} ({again} "
                    "graphs; TORCH_LOGS=recompiles says why)"
                )
        finally:
            self._running.release()

    def exclusive(self) -> threading.Lock:
        """Held while other modules run (refine, upscalers): no compile meanwhile."""
        return self._running

    def compile_wanted(self) -> None:
        """Start compiling the shapes asked for so far (call it once a request is done:
        its later micro-batches must not wait behind the compile)."""
        with self._lock:
            wanted, self._wanted = self._wanted, []
            for twins, pipe, shape in wanted:
                self._futures.append(self._compiler.submit(self._warm_up, twins, pipe, shape))

    def _compiled_twins(self, pipe: StableDiffusionXLPipeline) -> dict[str, Any]:
        unet = shared_twin(pipe.unet)
        if self._options.scope == "unet":
            unet.compile(fullgraph=True)
        else:
            unet.compile_repeated_blocks(fullgraph=True)
        if not self._options.vae:
            return {"unet": unet}
        vae = shared_twin(pipe.vae)
        vae.decoder.compile(fullgraph=True)
        return {"unet": unet, "vae": vae}

    def _warm_up(self, twins: _Twins, pipe: StableDiffusionXLPipeline, shape: Shape) -> None:
        started = time.perf_counter()
        before = _graphs()
        with self._running:
            with self._lock:  # ``forget`` may be changing the twins on the job's thread
                unloaded = all(twins is not t for t in self._twins.values())
            if unloaded:
                return  # its model was unloaded since the compile was asked for
            self._under_way = (f"{self._parts}, for {shape}", time.monotonic())
            try:
                self._compile(twins, pipe, shape)
            except Exception as exc:  # noqa: BLE001 - the shape stays eager, and says why
                with self._lock:
                    self._notes.append(
                        f"compiling {self._parts} for {shape} failed ({type(exc).__name__}: "
                        f"{exc}); images of that shape stay eager"
                    )
                return
            finally:
                self._under_way = None
            with self._lock:  # before the lock goes: a job that waited runs compiled
                twins.shapes.add(shape)
                twins.pending.discard(shape)
        seconds = time.perf_counter() - started
        if self._artifacts is not None:
            saved = torch.compiler.save_cache_artifacts()
            if saved is not None:
                self._artifacts.parent.mkdir(parents=True, exist_ok=True)
                self._artifacts.write_bytes(saved[0])
        with self._lock:
            self._notes.append(
                f"compiled {self._parts} for {shape} in {seconds:.1f}s in the background "
                f"({_graphs() - before}); images of that shape use it from now"
            )

    def _compile(self, twins: _Twins, pipe: StableDiffusionXLPipeline, shape: Shape) -> None:
        """Compile (and warm up) the twins for ``shape``; the caller holds ``_running``."""
        if not twins.modules:
            twins.modules = self._compiled_twins(pipe)
        # Its own scheduler: the job thread's is in use; the rest only computes.
        scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        warm = StableDiffusionXLPipeline(
            **{**pipe.components, **twins.modules, "scheduler": scheduler}
        )
        warm.set_progress_bar_config(disable=True)
        # Called as jobs call it (the pipeline's own no_grad, not inference_mode): graphs
        # are guarded on the tensors' dispatch keys, and a warm-up under another grad mode
        # left the first job of the shape to compile again, in its own time.
        warm(
            prompt=["warm-up"] * shape.batch,
            width=shape.width,
            height=shape.height,
            num_inference_steps=2,
            guidance_scale=5.0 if shape.guided else 1.0,
            # The decoder runs only where it is compiled.
            output_type="pil" if "vae" in twins.modules else "latent",
        )
        # What a compile leaves (graphs, guards, kernels: 160k-235k objects even for the
        # tiny model) lives as long as the process. Frozen, it is out of the sight of the
        # full collection that settles each request, which otherwise scans it all (73 ms a
        # request on a small CPU, the device idle meanwhile). Frozen while no denoise runs,
        # so that none of a request's objects is frozen with it.
        del warm, scheduler
        gc.collect()
        gc.freeze()

    def stop(self) -> None:
        self._compiler.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Graphs:
    """Graphs inductor compiled, and took from its on-disk cache instead, so far."""

    compiled: int
    cached: int

    def __sub__(self, other: _Graphs) -> _Graphs:
        return _Graphs(self.compiled - other.compiled, self.cached - other.cached)

    def __str__(self) -> str:
        return f"{self.compiled} graphs compiled, {self.cached} from the cache"


def _dynamo_graphs() -> int:
    """Graphs dynamo has captured and compiled so far, in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _graphs() -> _Graphs:
    from torch._dynamo.utils import counters

    found = counters["inductor"]
    return _Graphs(int(found["fxgraph_cache_miss"]), int(found["fxgraph_cache_hit"]))
