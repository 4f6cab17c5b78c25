"""UNets (and optionally VAE decoders) compiled in the background, so that images never
wait for the compiler: the UNet by regions (diffusers' ``compile_repeated_blocks``: one
transformer block compiled and reused; seconds) or whole (one graph; minutes, fewer
kernel launches).

A job of a shape with no compiled graph yet is denoised eagerly; once its request is
done (or once the worker is idle after preloading the default model, for one image of
its defaults), the compile thread compiles twins of the model's UNet (and VAE) made for that shape
(``runners/twins.py``). From then on, jobs of that shape use the twins. Compiled graphs go
to a cache on disk (``runners/compile_cache.py``), so that a restarted worker does not
compile again from scratch.

Compiling and running modules at the same time is not safe in torch (its tracer patches
``Module.__call__`` for every thread while it traces), so a compile here and a denoise
never overlap. With a cache on disk, the cold compile runs in a helper process
(``runners/compile_helper.py``) while jobs run eagerly, and what is left here is a compile
from the cache: jobs that arrive meanwhile wait for that only (a tenth of the time, or
less), and are told so. Without a cache, or without room on the device for the helper's
copy of the weights, the whole compile runs here and they wait for all of it.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from diffusers import StableDiffusionXLPipeline

from dreamforge.runners.compile_cache import CompileCache, compile_listing
from dreamforge.runners.compile_helper import CompileHelper, HelperJob, helper_job, weight_bytes
from dreamforge.runners.compile_options import CompileOptions
from dreamforge.runners.twins import (
    MAX_SHAPES,
    Graphs,
    PromptShape,
    Shape,
    compiled_twins,
    graphs_so_far,
    warm_up,
)


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


class CompiledModules:
    def __init__(
        self, options: CompileOptions, free_bytes: Callable[[], int | None] = lambda: None
    ) -> None:
        """``free_bytes``: the device memory a helper process could take now, for its copy
        of the weights (``None``: the device cannot tell; on the CPU, the host's)."""
        self._options = options
        self._free_bytes = free_bytes
        self._helper: CompileHelper | None = None
        self._cache = CompileCache(options)
        self._twins: dict[str, _Twins] = {}
        self._lock = threading.Lock()  # guards the bookkeeping
        self._running = threading.Lock()  # held by a denoise or a compile, never both
        # Shapes to compile, in order: the ones jobs asked for, then the ones foreseen
        # (a preload's), which no one waits for yet.
        self._wanted: list[tuple[_Twins, StableDiffusionXLPipeline, Shape]] = []
        self._foreseen: list[tuple[_Twins, StableDiffusionXLPipeline, Shape]] = []
        self._compiled_here: set[str] = set()  # compile_listing()s: the compile thread's
        self._compiler = ThreadPoolExecutor(1, thread_name_prefix="dreamforge-compile")
        self._futures: list[Future[None]] = []
        self._notes: list[str] = []  # what finished since they were last taken
        self._under_way: tuple[str, float] | None = None  # the compile running, since when
        self._parts = "the whole UNet" if options.scope == "unet" else "the UNet by regions"
        if options.vae:
            self._parts += " and the VAE decoder"
        if self._cache.saved:
            # On the compile thread, ahead of any compile: loading them (and importing the
            # compiler) takes a second or more, which the first image must not wait for.
            self._futures.append(self._compiler.submit(self._cache.load))

    def forget(self, model_ids: Iterable[str]) -> None:
        """Let go of the twins of models that were unloaded: they hold the very same
        weights, which would otherwise stay in (device) memory."""
        with self._lock:
            dropped = [self._twins.pop(m) for m in model_ids if m in self._twins]
            self._wanted = [w for w in self._wanted if w[0] not in dropped]
            self._foreseen = [w for w in self._foreseen if w[0] not in dropped]
        if dropped:
            del dropped
            # A compiled module refers to itself, so only the collector frees it, and what
            # a compile made was frozen out of its sight (see _compile): unfrozen for one
            # full collection, the rare price of unloading a model, then frozen again.
            gc.unfreeze()
            gc.collect()
            gc.freeze()

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
            twins, warm = self._want(model_id, sha256, pipe, shape)
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

    def want(
        self, model_id: str, sha256: str, pipe: StableDiffusionXLPipeline, shape: Shape
    ) -> None:
        """Compile for ``shape`` ahead of any job of it (``compile_wanted`` starts it),
        though after the shapes that jobs asked for meanwhile."""
        self._want(model_id, sha256, pipe, shape, foreseen=True)

    def _want(
        self,
        model_id: str,
        sha256: str,
        pipe: StableDiffusionXLPipeline,
        shape: Shape,
        *,
        foreseen: bool = False,
    ) -> tuple[_Twins, bool]:
        """The model's twins, and whether they are warm for ``shape``; if not, the shape
        is wanted, once."""
        with self._lock:
            twins = self._twins.get(model_id)
            if twins is None or twins.sha256 != sha256:
                twins = _Twins(sha256, {}, set(), set())
                self._twins[model_id] = twins
            warm = shape in twins.shapes
            if not warm and shape not in twins.pending:
                twins.pending.add(shape)
                (self._foreseen if foreseen else self._wanted).append((twins, pipe, shape))
            return twins, warm

    def exclusive(self) -> threading.Lock:
        """Held while other modules run (refine, upscalers): no compile meanwhile."""
        return self._running

    def compile_wanted(self) -> None:
        """Start compiling the shapes asked for so far (call it once a request is done:
        its later micro-batches must not wait behind the compile)."""
        with self._lock:
            wanted = self._wanted + self._foreseen
            self._wanted, self._foreseen = [], []
            self._futures = [f for f in self._futures if not f.done()]  # a worker's life long
            for twins, pipe, shape in wanted:
                # Held weakly: a model unloaded meanwhile goes at once, and its weights with
                # it, rather than when its compile ends (minutes, for a whole UNet).
                work = self._compiler.submit(
                    self._warm_up, weakref.ref(twins), weakref.ref(pipe), shape
                )
                self._futures.append(work)

    def _warm_up(
        self,
        twins_ref: weakref.ref[_Twins],
        pipe_ref: weakref.ref[StableDiffusionXLPipeline],
        shape: Shape,
    ) -> None:
        loaded = self._still_loaded(twins_ref, pipe_ref)
        if loaded is None:
            return  # its model was unloaded since the compile was asked for
        pipe = loaded[1]
        listing = compile_listing(pipe, self._parts, shape)
        if listing not in self._compiled_here and len(self._compiled_here) >= MAX_SHAPES:
            self._note(
                f"{self._parts} not compiled for {shape}: this process has graphs for "
                f"{MAX_SHAPES} shapes, the most it keeps; images of that shape stay eager"
            )
            return
        # A shape the cache holds (an earlier life of this worker compiled it) compiles
        # here in seconds: a helper process would only add its start to that.
        job = None if self._cache.holds(listing) else self._helper_job(pipe, shape)
        del loaded, pipe  # not held while the helper compiles
        elsewhere = self._compile_elsewhere(job, shape) if job is not None else None
        started = time.perf_counter()
        before = graphs_so_far()
        with self._running:
            loaded = self._still_loaded(twins_ref, pipe_ref)
            if loaded is None:
                return
            twins, pipe = loaded
            self._under_way = (f"{self._parts}, for {shape}", time.monotonic())
            try:
                self._compile(twins, pipe, shape)
            except Exception as exc:  # noqa: BLE001 - the shape stays eager, and says why
                self._note(
                    f"compiling {self._parts} for {shape} failed ({type(exc).__name__}: "
                    f"{exc}); images of that shape stay eager"
                )
                return
            finally:
                self._under_way = None
            with self._lock:  # before the lock goes: a job that waited runs compiled
                twins.shapes.add(shape)
                twins.pending.discard(shape)
            self._compiled_here.add(listing)
        seconds = time.perf_counter() - started
        self._cache.save(listing)
        here = graphs_so_far() - before
        if elsewhere is None:
            how = f"in {seconds:.1f}s in the background ({here})"
        else:
            helper_s, helper_graphs = elsewhere
            how = (
                f"in {helper_s + seconds:.1f}s: in a helper process in {helper_s:.1f}s "
                f"({helper_graphs}) while images ran eager, then here in {seconds:.1f}s ({here})"
            )
        self._note(f"compiled {self._parts} for {shape} {how}; images of that shape use it now")

    def _still_loaded(
        self, twins_ref: weakref.ref[_Twins], pipe_ref: weakref.ref[StableDiffusionXLPipeline]
    ) -> tuple[_Twins, StableDiffusionXLPipeline] | None:
        """The twins and the pipeline, if neither has been let go since."""
        twins, pipe = twins_ref(), pipe_ref()
        if twins is None or pipe is None:
            return None
        with self._lock:  # ``forget`` may be changing the twins on the job's thread
            if all(twins is not t for t in self._twins.values()):
                return None
        return twins, pipe

    def _note(self, note: str) -> None:
        with self._lock:
            self._notes.append(note)

    def _helper_job(self, pipe: StableDiffusionXLPipeline, shape: Shape) -> HelperJob | None:
        """What a helper process would compile for ``shape``; ``None`` if none can: no
        cache to share the graphs through, no room on the device for its copy of the
        weights, or the model cannot be copied for it (said in the job's log)."""
        if self._options.cache_dir is None:
            return None
        # The copy of the weights, and as much again for the warm-up's activations.
        free = self._free_bytes()
        if free is not None and free < 2 * weight_bytes(pipe):
            return None
        try:
            return helper_job(pipe, self._options, shape)
        except Exception as exc:  # noqa: BLE001 - compiled here instead, and said
            self._helper_failed(shape, exc)
            return None

    def _compile_elsewhere(self, job: HelperJob, shape: Shape) -> tuple[float, Graphs] | None:
        """Compile ``job`` in a helper process, into the cache on disk that the compile
        here then reads; its seconds and graphs, or ``None`` if it failed."""
        started = time.perf_counter()
        self._under_way = (f"{self._parts}, for {shape}, in a helper process", time.monotonic())
        try:
            self._helper = CompileHelper(job)
            graphs = self._helper.result()
        except Exception as exc:  # noqa: BLE001 - compiled here instead, and said
            self._helper_failed(shape, exc)
            return None
        finally:
            self._helper = None
            self._under_way = None
        return time.perf_counter() - started, graphs

    def _helper_failed(self, shape: Shape, exc: Exception) -> None:
        self._note(
            f"compiling {self._parts} for {shape} in a helper process failed "
            f"({type(exc).__name__}: {exc}); compiling here, images of that shape wait for it"
        )

    def _compile(self, twins: _Twins, pipe: StableDiffusionXLPipeline, shape: Shape) -> None:
        """Compile (and warm up) the twins for ``shape``; the caller holds ``_running``."""
        if not twins.modules:
            twins.modules = compiled_twins(pipe, self._options)
        warm_up(pipe, twins.modules, shape, PromptShape.of(pipe))
        # What a compile leaves (graphs, guards, kernels: 160k-235k objects even for the
        # tiny model) lives as long as the process. Frozen, it is out of the sight of the
        # full collection that settles each request, which otherwise scans it all (73 ms a
        # request on a small CPU, the device idle meanwhile). Frozen while no denoise runs,
        # so that none of a request's objects is frozen with it.
        gc.collect()
        gc.freeze()

    def stop(self) -> None:
        self._compiler.shutdown(wait=False, cancel_futures=True)
        helper = self._helper
        if helper is not None:
            helper.kill()


def _dynamo_graphs() -> int:
    """Graphs dynamo has captured and compiled so far, in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
