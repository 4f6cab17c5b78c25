"""A child process that owns the pipeline, as Replicate's Cog does.

The worker process stays light and responsive (leases, cancel, time limits) while the
child does the GPU work; a child that hangs or dies is killed and replaced, and the
pipelines it had loaded stay loaded across jobs for as long as it lives.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import multiprocessing.forkserver
import os
import select
import threading
import weakref
from collections.abc import Callable
from multiprocessing.synchronize import Event
from typing import Any

import structlog

from dreamforge.domain.errors import ErrorCode
from dreamforge.domain.jobs import ModelDefaults
from dreamforge.logs import outside_any_job
from dreamforge.runners.compile_options import EAGER, CompileOptions
from dreamforge.runners.protocol import (
    DeviceMemory,
    Failed,
    Finished,
    ModelLoaded,
    ModelRef,
    Outcome,
    RenderRequest,
    RunnerCrashed,
    RunnerMessage,
    StepReports,
    Tick,
)

log = structlog.get_logger(__name__)

# Children fork from a server process that has imported torch, transformers and the rest
# once: a spawned child spends seconds of CPU importing them (six on a small machine), and
# a runner is started again after every crash, kill or recycle. Forking after importing
# torch is what its DataLoader does; forking after CUDA has been asked anything is not
# safe, and torch then refuses CUDA in the child ("Cannot re-initialize CUDA in forked
# subprocess"). diffusers asks at import (how many devices: its default device), so each
# child imports it itself: under half a second once the rest is loaded.
PRELOADED = [
    "torch",
    "transformers.models.clip.modeling_clip",
    "transformers.models.clip.tokenization_clip",
    "accelerate",
    "spandrel",
    "safetensors.torch",
    "PIL.PngImagePlugin",
    "dreamforge.runners.device",
]
_CHILDREN = multiprocessing.get_context("forkserver")
_CHILDREN.set_forkserver_preload(PRELOADED)


def start_fork_server() -> None:
    """Start the server that pipeline processes fork from now, without waiting for its
    imports (seconds: transformers alone takes two on a small CPU). A command calls it
    first thing, so those imports overlap its own start instead of following it: the
    first job, or the preload of the default model, finds them done or under way."""
    multiprocessing.forkserver.ensure_running()


# How long the relay waits on a silent child before it ticks anyway. The worker also ticks
# after every message (the child sends one at least every progress interval while it
# denoises) and at once when woken (a cancel, a shutdown), so this only paces the quiet
# stretches (a model load, a long step, an image being encoded) for what nobody announces:
# a time limit, a lease to renew. Each tick is a thread waking: at 0.05 s, the quiet ticks
# cost ~9% of a small job's CPU.
QUIET_TICK_S = 0.2

# How long a child waits for its next request before it counts as idle. A job waiting for
# the child is sent the moment the previous request ends; this is many times that.
IDLE_AFTER_S = 1.0


def _child_main(
    conn: multiprocessing.connection.Connection,
    cancel: Event,
    device: str | None,
    memory_budget_bytes: int | None,
    compiling: CompileOptions,
) -> None:
    if compiling.inductor_cache:  # read by inductor when it first looks for its cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compiling.inductor_cache)
    from tqdm import tqdm

    from dreamforge.runners.device import InsufficientMemory, select_device
    from dreamforge.runners.sdxl import Canceled, DeviceFull, ModelUnusable, SdxlRunner

    # What torch, diffusers and transformers made on import (~500k objects) lives as long
    # as the process: out of the cycle collector's sight, the full collection that settles
    # each request scans only what came after (1.5 ms instead of 240 ms on a small CPU,
    # added to every job's end).
    gc.freeze()
    # diffusers' bars are off, but tqdm still makes a multiprocessing lock at the first
    # one: a named semaphore that a killed child (recycled, past its time limit) leaves on
    # the machine until the server stops, one a child. Bars here are never shared.
    tqdm.set_lock(threading.RLock())
    runner = SdxlRunner(select_device(device), memory_budget_bytes, compiling)
    while True:
        try:
            if not conn.poll(IDLE_AFTER_S):
                runner.idle()
            request = conn.recv()
        except (EOFError, KeyboardInterrupt):
            break
        if request is None:
            break
        failed: tuple[ErrorCode, str] | None = None
        try:
            reports = StepReports(request.progress_interval_s, conn.send)
            runner.run(request, reports, cancel.is_set)
        except Canceled:
            failed = ErrorCode.CANCELED, "canceled by request"
        except ModelUnusable as exc:
            failed = ErrorCode.MODEL_NOT_READY, str(exc)
        except InsufficientMemory as exc:
            failed = ErrorCode.INSUFFICIENT_VRAM, str(exc)
        except DeviceFull as exc:
            failed = ErrorCode.GPU_OOM, str(exc)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the worker
            code = ErrorCode.GPU_OOM if is_out_of_memory(exc) else ErrorCode.RUNNER_ERROR
            failed = code, f"{type(exc).__name__}: {exc}"
        # Measured once the failure's traceback (and the activations it holds) is gone.
        memory = runner.report()
        conn.send(Finished(memory) if failed is None else Failed(*failed, memory))
    if runner.compiled is not None:
        # A compile under way is of no use now: exit without waiting for its thread.
        conn.close()
        os._exit(0)


def is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError)


class _Doorbell:
    """A pipe that any thread rings to wake a ``poll`` on its read end at once."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)
        weakref.finalize(self, _close, self._read, self._write)

    def fileno(self) -> int:
        return self._read

    def ring(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: it rings already
            os.write(self._write, b"\0")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass


class _Leave(Exception):
    """The runner is being stopped or killed: the start thread stops relaying the preload."""


def _log_preloaded(message: RunnerMessage) -> None:
    """A preload's load is no job's: the service's log is where its time is told, when it
    ends, without the name of a job that waited for it."""
    if isinstance(message, ModelLoaded):
        with outside_any_job():
            log.info(
                "runner.preloaded",
                model_id=message.model_id,
                seconds=round(message.seconds, 2),
                device=message.device,
                dtype=message.dtype,
            )


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class SdxlProcessRunner:
    """The SDXL runner in a child process (see the module docstring)."""

    def __init__(
        self,
        device: str | None = None,
        memory_budget_bytes: int | None = None,
        compiling: CompileOptions = EAGER,
    ) -> None:
        self._device = device
        self._memory_budget_bytes = memory_budget_bytes
        self._compiling = compiling
        self._context = _CHILDREN
        self._process: Any = None
        self._conn: multiprocessing.connection.Connection | None = None
        # Made with each child, and let go with it: a process that ends by a signal runs no
        # finalizers, and its semaphores would be reported leaked at exit.
        self._cancel: Event | None = None
        self._preloading = False  # the preload's answer is still to be read
        self._starting: threading.Thread | None = None
        self._leaving = threading.Event()  # set by kill and stop: the start thread ends
        self._memory: DeviceMemory | None = None
        self._poller = select.poll()
        self._doorbell = _Doorbell()  # wake(): the relay ticks now, not at its next message

    @property
    def pid(self) -> int | None:
        """The child's process id, while there is one."""
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self) -> None:
        if self.alive:
            return
        self._discard()  # a dead one's pipe, and the answer to a preload it never gave
        parent, child = self._context.Pipe()
        self._cancel = self._context.Event()
        self._process = self._context.Process(
            target=_child_main,
            args=(child, self._cancel, self._device, self._memory_budget_bytes, self._compiling),
            name="dreamforge-runner",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._conn = parent
        # One poll object for the pipe's life: Connection.poll builds a selector on every
        # call, and the relay loop polls once per denoising step.
        self._poller = select.poll()
        self._poller.register(parent.fileno(), select.POLLIN)
        self._poller.register(self._doorbell.fileno(), select.POLLIN)
        log.info("runner.started", pid=self._process.pid)

    def memory(self) -> DeviceMemory | None:
        return self._memory

    def wake(self) -> None:
        self._doorbell.ring()

    def render(
        self,
        request: RenderRequest,
        on_message: Callable[[RunnerMessage], None],
        tick: Callable[[], Tick],
        poll_s: float = QUIET_TICK_S,
    ) -> Outcome:
        """Send one request and relay the child's messages until it ends.

        If relaying or ticking raises (the database went away, say), the child is killed:
        it would otherwise go on sending the rest of this request into the next one.
        """
        if self._starting is None and not self.alive:
            self._start_in_background()
        self._await_start(tick, poll_s)
        self.start()  # at once, unless the start in the background failed
        assert self._conn is not None and self._cancel is not None
        try:
            # The start thread ended before the preload's answer; if the child died in
            # the preload, the request gets a fresh one (the crash is not the request's).
            if self._preloading and not self._relay_preload(tick, poll_s):
                self.start()
                assert self._conn is not None and self._cancel is not None
            self._cancel.clear()
            self._conn.send(request)
            return self._relay_until_done(on_message, tick, poll_s)
        except RunnerCrashed:
            raise
        except BaseException:
            self.kill()
            raise

    def _relay_until_done(
        self,
        on_message: Callable[[RunnerMessage], None],
        tick: Callable[[], Tick],
        poll_s: float,
    ) -> Outcome:
        assert self._conn is not None and self._cancel is not None
        pipe, cancel = self._conn.fileno(), self._cancel
        while True:
            ready = [fd for fd, _ in self._poller.poll(poll_s * 1000)]
            if self._doorbell.fileno() in ready:
                self._doorbell.clear()
            if pipe in ready:
                try:
                    message = self._conn.recv()
                except (EOFError, OSError) as exc:
                    self._process.join(1)  # its exit code says how it died (-9: killed)
                    code = self._process.exitcode
                    self._discard()
                    raise RunnerCrashed(f"the runner process died with exit code {code}") from exc
                if isinstance(message, Finished | Failed):
                    self._memory = message.memory or self._memory
                    return message
                on_message(message)
            elif not self.alive:
                code = self._process.exitcode if self._process else None
                self._discard()
                raise RunnerCrashed(f"the runner process exited with code {code}")
            decision = tick()
            if decision is Tick.CANCEL:
                cancel.set()
            elif decision is Tick.KILL:
                self.kill()
                raise RunnerCrashed("the runner process was killed")

    def preload(self, model: ModelRef, defaults: ModelDefaults | None = None) -> None:
        """Start loading ``model`` in a child now, without waiting: the first job then
        finds it loaded instead of paying for the child's start and the load (and, with
        compile on, compiled for ``defaults`` if no job came for a while)."""
        self._start_in_background(RenderRequest(None, model, (), defaults=defaults))

    def _start_in_background(self, preload: RenderRequest | None = None) -> None:
        """Start the child on a thread: the first start waits for the fork server's
        imports, seconds in which the caller has a lease to keep. A preload's answer is
        read there too, so that its load is logged when it ends (a request waits for it
        either way)."""

        def leave_when_told() -> Tick:
            if self._leaving.is_set():
                raise _Leave
            return Tick.CONTINUE

        def begin() -> None:
            try:
                self.start()
                if preload is not None:
                    assert self._conn is not None
                    self._conn.send(preload)
                    self._preloading = True
                    self._relay_preload(leave_when_told, QUIET_TICK_S)
            except (_Leave, RunnerCrashed):
                pass  # stopped or killed meanwhile: the answer, if any, dies with the child
            except Exception:  # render starts it again, and raises what went wrong
                log.warning("runner.start_failed", exc_info=True)

        self._leaving.clear()
        self._starting = threading.Thread(target=begin, name="dreamforge-runner-start")
        self._starting.start()

    def _relay_preload(self, tick: Callable[[], Tick], poll_s: float) -> bool:
        """Read the preload's answer, logging it; ``False`` if the child died meanwhile
        (it is discarded: the next request starts a fresh one)."""
        try:
            outcome = self._relay_until_done(_log_preloaded, tick, poll_s)
        except RunnerCrashed as exc:
            if self._leaving.is_set():  # killed as a tick asked: the request ends too
                raise
            log.warning("runner.preload_failed", code=ErrorCode.RUNNER_CRASHED, error=str(exc))
            return False
        self._preloading = False
        if isinstance(outcome, Failed):
            log.warning("runner.preload_failed", code=outcome.code, error=outcome.message)
        return True

    def _await_start(self, tick: Callable[[], Tick], poll_s: float) -> None:
        """Wait for a start under way, ticking meanwhile (a cancel is seen once the
        request is sent; a kill cannot wait)."""
        while self._starting is not None:
            self._starting.join(poll_s)
            if not self._starting.is_alive():
                self._starting = None
            elif tick() is Tick.KILL:
                raise RunnerCrashed("the runner was stopped while its process started or preloaded")

    def _started(self) -> None:
        """Wait for a start under way, if any."""
        if self._starting is not None:
            self._starting.join()
            self._starting = None

    def recycle(self) -> DeviceMemory | None:
        """Kill the child: the driver takes back all it held on the device. The next
        request starts a fresh one (not now: the job being finished should not wait for
        it), whose figures come with its first answer."""
        self.kill()
        return None

    def kill(self) -> None:
        self._leaving.set()
        self._started()
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
        self._discard()

    def stop(self) -> None:
        self._leaving.set()
        self._started()
        if self._conn is not None and self.alive:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._process.join(5)
        if self.alive:
            self.kill()
        self._discard()

    def _discard(self) -> None:
        self._preloading = False
        self._memory = None  # whatever it held went with it
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._process = None
        self._cancel = None
