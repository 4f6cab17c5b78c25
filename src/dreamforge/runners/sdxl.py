"""The SDXL runner: diffusers' StableDiffusionXLPipeline, kept loaded between jobs."""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UniPCMultistepScheduler,
)
from diffusers.utils import logging as diffusers_logging
from PIL import Image
from transformers.utils import logging as transformers_logging

from dreamforge import __version__
from dreamforge.artifacts.receipts import Receipt, encode_png
from dreamforge.domain.chains import RefineStep, UpscaleStep, refine_denoising_steps
from dreamforge.domain.jobs import JobSpec, Scheduler
from dreamforge.runners.compile_options import EAGER, CompileOptions
from dreamforge.runners.compiled import CompiledModules, bucket_size
from dreamforge.runners.device import (
    DeviceChoice,
    allocated_memory,
    check_headroom,
    default_budget,
    fit_batch,
    free_memory,
    free_to_other_processes,
    memory_report,
    settle,
)
from dreamforge.runners.making import lanczos, parent_image, receipt_for
from dreamforge.runners.protocol import (
    DeviceMemory,
    ItemRendered,
    ItemToRender,
    ModelLoaded,
    ModelRef,
    RenderRequest,
    RunnerMessage,
    RunnerNote,
    StepDone,
)
from dreamforge.runners.resident import Resident, ResidentPipelines
from dreamforge.runners.single_file import load_single_file
from dreamforge.runners.twins import Shape
from dreamforge.runners.upscale import Upscalers, upscale_tiled

SCHEDULERS: dict[Scheduler, Any] = {
    Scheduler.EULER: EulerDiscreteScheduler,
    Scheduler.EULER_A: EulerAncestralDiscreteScheduler,
    Scheduler.DPMPP_2M: DPMSolverMultistepScheduler,
    Scheduler.DDIM: DDIMScheduler,
    Scheduler.HEUN: HeunDiscreteScheduler,
    Scheduler.UNIPC: UniPCMultistepScheduler,
}


class Canceled(Exception):
    """Raised from the step callback to stop denoising at once."""


class ModelUnusable(Exception):
    """The model's files are gone, changed or unreadable; the message says which."""


class DeviceFull(Exception):
    """Out of device memory with one image at a time; the message has the figures."""


def check_files(model: ModelRef) -> None:
    """Cheap, before a load: every registered weight file is there, at its registered size
    (``dreamforge model verify`` hashes them; a load should not)."""
    root = Path(model.path)
    for relative, size in model.files:
        file = root / relative if root.is_dir() else root
        if not file.is_file():
            raise ModelUnusable(f"model {model.id}: {relative} is missing")
        if file.stat().st_size != size:
            raise ModelUnusable(
                f"model {model.id}: {relative} has changed ({file.stat().st_size:,} bytes, "
                f"{size:,} registered); run `dreamforge model verify {model.id}`"
            )


def library_versions() -> dict[str, str]:
    return {
        "dreamforge": __version__,
        "diffusers": version("diffusers"),
        "torch": torch.__version__,
        "transformers": version("transformers"),
    }


# Threads that encode a micro-batch's PNGs at once: Pillow lets go of the GIL while it
# compresses, and the device waits for the batch's last image before the next request.
ENCODE_THREADS = min(8, os.cpu_count() or 1)


def _no_empty_fp32_warning(record: logging.LogRecord) -> bool:
    return "should be kept in float32: []" not in record.getMessage()


class SdxlRunner:
    def __init__(
        self,
        device: DeviceChoice,
        memory_budget_bytes: int | None = None,
        compiling: CompileOptions = EAGER,
        encode_threads: int = ENCODE_THREADS,
    ) -> None:
        self._device = device
        self._encoders = ThreadPoolExecutor(encode_threads, thread_name_prefix="dreamforge-encode")
        wanted = compiling.wanted_on(device.device.type)
        self.compiled = (
            CompiledModules(compiling, lambda: free_to_other_processes(device)) if wanted else None
        )
        budget = memory_budget_bytes or default_budget(device)
        self._resident = ResidentPipelines(budget)
        self._schedulers: dict[tuple[str, Scheduler], Any] = {}
        self._versions = library_versions()
        self._baseline: int | None = allocated_memory(device)  # nothing loaded yet
        self._upscalers = Upscalers(device)
        # Progress bars would land in the service's log, a line a load ("model ready" is
        # logged instead), and break one-JSON-object-a-line logs.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        # In half precision the pipeline casts SDXL's VAE to fp32 for every decode and back
        # (it overflows in fp16); diffusers warns at each cast about modules to keep in
        # fp32 while naming none, and once that the cast's helper is deprecated: two lines
        # an image in the service's log, about nothing an operator can change.
        diffusers_logging.get_logger("diffusers.models.modeling_utils").addFilter(
            _no_empty_fp32_warning
        )
        warnings.filterwarnings("ignore", "`upcast_vae` is deprecated", FutureWarning)

    def idle(self) -> None:
        """No request has come for a moment: start the compiles still wanted (the one a
        preload asked for; a request's end starts those it asked for itself)."""
        if self.compiled is not None:
            self.compiled.compile_wanted()

    def report(self) -> DeviceMemory:
        """Device memory once this request's leftovers are given back, against the
        baseline of the pipelines kept loaded."""
        settle(self._device)
        return memory_report(self._device, self._baseline)

    def _load(self, model: ModelRef) -> tuple[StableDiffusionXLPipeline, Any, ModelLoaded]:
        started = time.perf_counter()
        resident = self._resident.get(model.id, model.sha256)
        if resident is not None:
            pipe, scheduler_config = resident.pipe, resident.scheduler_config
            return pipe, scheduler_config, self._loaded(model, started, cached=True)
        check_files(model)
        size = sum(size for _, size in model.files)
        evicted = self._resident.make_room(model.id, size)
        if self.compiled is not None:
            self.compiled.forget(evicted)
        self._schedulers = {k: v for k, v in self._schedulers.items() if k[0] in self._resident}
        _empty_cache(self._device)
        try:
            if model.format == "single_file":
                pipe = load_single_file(Path(model.path), self._device.dtype, self._device.device)
            else:
                pipe = self._from_folder(model)
        except Exception as exc:
            # diffusers' own message names internals; the user needs to know which model.
            raise ModelUnusable(
                f"model {model.id} could not be loaded ({type(exc).__name__}); run "
                f"`dreamforge model verify {model.id}`"
            ) from exc
        if not getattr(pipe, "hf_device_map", None):
            # What was not placed as it was read (a single file's text encoders, a folder
            # off CUDA) goes now; what is on the device already stays where it is.
            pipe = pipe.to(self._device.device)
        pipe.set_progress_bar_config(disable=True)
        scheduler_config = pipe.scheduler.config
        self._resident.add(model.id, Resident(model.sha256, pipe, scheduler_config, size))
        settle(self._device)
        self._baseline = allocated_memory(self._device)  # what the loaded pipelines hold
        others = tuple(e for e in evicted if e != model.id)
        return pipe, scheduler_config, self._loaded(model, started, cached=False, evicted=others)

    def _from_folder(self, model: ModelRef) -> StableDiffusionXLPipeline:
        """A diffusers folder; on CUDA, each weight goes to the device as it is read (no
        whole copy in host memory first), where this diffusers can."""
        options: dict[str, Any] = {"dtype": self._device.dtype, "local_files_only": True}
        if self._device.device.type == "cuda":
            try:
                return StableDiffusionXLPipeline.from_pretrained(
                    model.path, device_map="cuda", **options
                )
            except (TypeError, ValueError, NotImplementedError):
                pass  # an older diffusers: load, then move
        return StableDiffusionXLPipeline.from_pretrained(model.path, **options)

    def _loaded(
        self, model: ModelRef, started: float, cached: bool, evicted: tuple[str, ...] = ()
    ) -> ModelLoaded:
        seconds = time.perf_counter() - started
        device = self._device
        return ModelLoaded(
            model.id, seconds, cached, str(device.device), device.dtype_name, evicted
        )

    def _exclusive(self) -> AbstractContextManager[Any]:
        """No background compile while modules run here (see runners/compiled.py)."""
        return self.compiled.exclusive() if self.compiled else nullcontext()

    def _scheduler(self, model_id: str, name: Scheduler, config: Any) -> Any:
        # Schedulers reset themselves in set_timesteps, so one instance per model and kind
        # serves every job, and building one (sigma tables) stays off the hot path.
        key = (model_id, name)
        if key not in self._schedulers:
            self._schedulers[key] = SCHEDULERS[name].from_config(config)
        return self._schedulers[key]

    def run(
        self,
        request: RenderRequest,
        emit: Callable[[RunnerMessage], None],
        should_cancel: Callable[[], bool],
    ) -> None:
        """Render the request's step: generate, upscale or refine; raises ``Canceled``."""
        if isinstance(request.chain_step, UpscaleStep):
            self._upscale(request, request.chain_step, emit, should_cancel)
        elif isinstance(request.chain_step, RefineStep):
            self._refine(request, request.chain_step, emit, should_cancel)
        else:
            self.generate(request, emit, should_cancel)

    def _upscale(
        self,
        request: RenderRequest,
        step: UpscaleStep,
        emit: Callable[[RunnerMessage], None],
        should_cancel: Callable[[], bool],
    ) -> None:
        """With the step's model over tiles, then resampled to the asked size (a 4x model
        asked for 2x); by Lanczos alone when the step names no model."""
        upscaler = None
        if request.step_model is not None:
            started = time.perf_counter()
            check_files(request.step_model)
            upscaler, cached = self._upscalers.get(request.step_model)
            emit(self._loaded(request.step_model, started, cached))
        for item in request.items:
            image = parent_image(item)
            if upscaler is not None:

                def on_tile(done: int, tiles: int, index: int = item.index) -> None:
                    emit(StepDone((index,), done, tiles))
                    if should_cancel():
                        raise Canceled

                with self._exclusive():
                    image = upscale_tiled(upscaler, image, request.tile_px, on_tile)
            else:
                emit(StepDone((item.index,), 1, 1))
            image = lanczos(image, request.width, request.height)
            receipt = self._receipt(request, item, str(self._device.device), "float32")
            _encode_and_send(image, item, receipt, emit)

    def _refine(
        self,
        request: RenderRequest,
        step: RefineStep,
        emit: Callable[[RunnerMessage], None],
        should_cancel: Callable[[], bool],
    ) -> None:
        """SDXL image-to-image over each item's parent, with the item's seed."""
        assert request.step_model is not None and request.spec is not None
        model = request.step_model
        pipe, scheduler_config, loaded = self._load(model)
        emit(loaded)
        img2img = StableDiffusionXLImg2ImgPipeline.from_pipe(pipe)
        img2img.set_progress_bar_config(disable=True)
        img2img.scheduler = self._scheduler(model.id, request.spec.scheduler, scheduler_config)
        total = refine_denoising_steps(step)
        for item in request.items:

            def on_step_end(
                _pipe: Any, index: int, _timestep: Any, kwargs: dict[str, Any], item: Any = item
            ) -> dict[str, Any]:
                emit(StepDone((item.index,), min(index + 1, total), total))
                if should_cancel():
                    raise Canceled
                return kwargs

            with self._exclusive():
                image: Image.Image = img2img(
                    prompt=step.prompt,
                    negative_prompt=step.negative_prompt or None,
                    image=parent_image(item),
                    strength=step.strength,
                    num_inference_steps=step.steps,
                    guidance_scale=step.guidance_scale,
                    generator=torch.Generator(device="cpu").manual_seed(item.seed),
                    callback_on_step_end=on_step_end,
                ).images[0]
            receipt = self._receipt(request, item, loaded.device, loaded.dtype)
            _encode_and_send(image, item, receipt, emit)

    def generate(
        self,
        request: RenderRequest,
        emit: Callable[[RunnerMessage], None],
        should_cancel: Callable[[], bool],
    ) -> None:
        """Render every requested item in micro-batches of at most ``request.max_batch``,
        one generator per item, reporting each step; raises ``Canceled``.

        A micro-batch that runs out of device memory is split in two and tried again. Its
        images are encoded (PNG and receipt) on several threads at once while the next
        micro-batch denoises, and sent in item order; all of them are sent before this
        returns or raises.
        """
        pipe, scheduler_config, loaded = self._load(request.model)
        emit(loaded)
        for note in self.compiled.take_notes() if self.compiled else []:
            emit(RunnerNote(note))
        spec = request.spec
        if spec is None:  # a preload
            if self.compiled is not None and request.defaults is not None:
                # Wanted, not started: the compile starts once the runner is idle (see
                # ``idle``), so that a job sent while the model loaded does not wait for it.
                defaults = request.defaults
                one = Shape(defaults.width, defaults.height, 1, defaults.guidance_scale > 1)
                self.compiled.want(request.model.id, request.model.sha256, pipe, one)
            return
        pipe.scheduler = self._scheduler(request.model.id, spec.scheduler, scheduler_config)
        lock = threading.Lock()  # the encoder thread and this one share the pipe

        def send(message: RunnerMessage) -> None:
            with lock:
                emit(message)

        pending = list(request.items)
        free, total = free_memory(self._device)
        check_headroom(free, total, spec.width, spec.height)
        size = fit_batch(request.max_batch, free, spec.width, spec.height)
        with ThreadPoolExecutor(1, thread_name_prefix="dreamforge-send") as sender:
            sent: list[Future[None]] = []
            try:
                while pending:
                    batch = tuple(pending[:size])
                    try:
                        images, compiled = self._denoise(
                            request.model, pipe, spec, batch, send, should_cancel, size
                        )
                    except torch.OutOfMemoryError as exc:
                        if size == 1:
                            raise DeviceFull(self._oom_figures(spec)) from exc
                        size //= 2  # what does not fit at once may fit in halves
                        _empty_cache(self._device)
                        continue
                    del pending[: len(batch)]
                    encoded = []
                    for item, image in zip(batch, images, strict=True):
                        receipt = self._receipt(request, item, loaded.device, loaded.dtype)
                        receipt = receipt.model_copy(update={"compiled": compiled})
                        encoded.append(self._encoders.submit(_encoded, image, item, receipt))
                    sent.append(sender.submit(_send_in_order, encoded, send))
            finally:
                for future in sent:
                    future.result()  # every finished image is sent, whatever happens next
                if self.compiled is not None:
                    self.compiled.compile_wanted()

    def _oom_figures(self, spec: JobSpec) -> str:
        settle(self._device)
        free, total = free_memory(self._device)
        held = allocated_memory(self._device)
        figures = ", ".join(
            f"{name} {value / 2**30:.1f} GiB"
            for name, value in (("free", free), ("total", total), ("held by the pipeline", held))
            if value is not None
        )
        return (
            f"out of device memory rendering one {spec.width}x{spec.height} image "
            f"(micro-batches already halved down to 1); {figures or 'no figures on this device'}"
        )

    def _denoise(
        self,
        model: ModelRef,
        pipe: StableDiffusionXLPipeline,
        spec: JobSpec,
        batch: tuple[ItemToRender, ...],
        send: Callable[[RunnerMessage], None],
        should_cancel: Callable[[], bool],
        most: int = 1,
    ) -> tuple[list[Image.Image], bool]:
        """The batch's images, and whether the compiled UNet made them.

        Compiled graphs are kept for batches of 1, 2, 4, 8… items: a batch of 3 runs
        compiled as a batch of 4, the extra item a copy whose image is dropped (on a GPU
        that waits on kernel launches it costs next to nothing), so that a new batch size
        rarely means a new compile; never past ``most``, what the device holds."""
        if self.compiled is None:
            return self._pipe_call(pipe, spec, batch, send, should_cancel), False
        bucket = min(bucket_size(len(batch)), max(most, len(batch)))
        shape = Shape(spec.width, spec.height, bucket, spec.guidance_scale > 1)

        def tell(note: str) -> None:
            send(RunnerNote(note))

        with self.compiled.modules_for(model.id, model.sha256, pipe, shape, tell) as twins:
            compiled = bool(twins)
            padded = batch + (batch[-1],) * (bucket - len(batch)) if compiled else batch
            eager = {name: getattr(pipe, name) for name in twins}
            pipe.register_modules(**twins)
            try:
                images = self._pipe_call(pipe, spec, padded, send, should_cancel, len(batch))
            finally:
                pipe.register_modules(**eager)
        return images[: len(batch)], compiled

    def _pipe_call(
        self,
        pipe: StableDiffusionXLPipeline,
        spec: JobSpec,
        batch: tuple[ItemToRender, ...],
        send: Callable[[RunnerMessage], None],
        should_cancel: Callable[[], bool],
        real: int | None = None,
    ) -> list[Image.Image]:
        """The images of ``batch``; only its first ``real`` items are reported (the rest
        pad it to a compiled size)."""
        indexes = tuple(item.index for item in batch[:real])

        def on_step_end(
            _pipe: Any, step: int, _timestep: Any, kwargs: dict[str, Any]
        ) -> dict[str, Any]:
            send(StepDone(indexes, step + 1, spec.steps))
            if should_cancel():
                raise Canceled
            return kwargs

        # One CPU generator per item: an item's noise depends on its seed alone, on every
        # device and in every micro-batch, so item i of a batch is item i rendered alone.
        generators = [torch.Generator(device="cpu").manual_seed(item.seed) for item in batch]
        # Items of other jobs in the same batch bring their own prompts.
        specs = [item.spec or spec for item in batch]
        negatives = [s.negative_prompt for s in specs]
        images: list[Image.Image] = pipe(
            prompt=[s.prompt for s in specs],
            negative_prompt=negatives if any(negatives) else None,
            width=spec.width,
            height=spec.height,
            num_inference_steps=spec.steps,
            guidance_scale=spec.guidance_scale,
            generator=generators,
            callback_on_step_end=on_step_end,
        ).images
        return images

    def _receipt(
        self, request: RenderRequest, item: ItemToRender, device: str, dtype: str
    ) -> Receipt:
        return receipt_for(request, item, self._versions, device, dtype)


def _encoded(image: Image.Image, item: ItemToRender, receipt: Receipt) -> ItemRendered:
    started = time.perf_counter()
    png = encode_png(image, receipt)
    seconds = time.perf_counter() - started
    return ItemRendered(item.index, item.seed, png, image.width, image.height, seconds)


def _encode_and_send(
    image: Image.Image,
    item: ItemToRender,
    receipt: Receipt,
    send: Callable[[RunnerMessage], None],
) -> None:
    send(_encoded(image, item, receipt))


def _send_in_order(
    encoded: list[Future[ItemRendered]], send: Callable[[RunnerMessage], None]
) -> None:
    """Each image as soon as it and the ones before it are encoded; one that could not be
    encoded holds back none of the rest, and its error is raised once they are sent."""
    failed: Exception | None = None
    for image in encoded:
        try:
            message = image.result()
        except Exception as exc:  # noqa: BLE001 - raised below, after the others
            failed = failed or exc
            continue
        send(message)
    if failed is not None:
        raise failed


def _empty_cache(device: DeviceChoice) -> None:
    if device.device.type == "cuda":
        torch.cuda.empty_cache()
