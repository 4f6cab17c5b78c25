"""A runner that renders on Replicate (roadmap M8), for when no local GPU is free.

Replicate because one plain JSON API (create a prediction, poll it, cancel it) reaches
every public SDXL checkpoint by owner, name and version, and the SDXL models' inputs
(prompt, negative_prompt, width, height, num_inference_steps, guidance_scale, scheduler,
seed) map one to one onto a job's spec. Each item is its own prediction with its own
seed, so a receipt says exactly what made its image. The images are fetched into Dream
Forge's storage like any other: a client cannot tell where a job ran, except that the
receipt names the provider and the model version.
"""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from dreamforge import __version__
from dreamforge.artifacts.receipts import encode_png
from dreamforge.config import Settings
from dreamforge.domain.errors import ErrorCode
from dreamforge.domain.jobs import ModelDefaults, Scheduler
from dreamforge.runners.making import receipt_for
from dreamforge.runners.protocol import (
    DeviceMemory,
    Failed,
    Finished,
    ItemRendered,
    ItemToRender,
    ModelLoaded,
    ModelRef,
    Outcome,
    RenderRequest,
    RunnerCrashed,
    RunnerMessage,
    StepDone,
    Tick,
)

PREFIX = "replicate:"
# Replicate's SDXL scheduler names; UniPC is not among them.
SCHEDULERS = {
    Scheduler.EULER: "K_EULER",
    Scheduler.EULER_A: "K_EULER_ANCESTRAL",
    Scheduler.DPMPP_2M: "DPMSolverMultistep",
    Scheduler.DDIM: "DDIM",
    Scheduler.HEUN: "HeunDiscrete",
}
MAX_IMAGE_BYTES = 64 * 2**20
# diffusers' progress bar, as the model's logs show it: " 40%|████      | 20/50 [00:02<…"
_PROGRESS = re.compile(r"(\d+)/(\d+) \[")


class ProviderRefused(Exception):
    """The provider will not do this (a bad token, an unknown model, an input it
    rejects): trying again would not help."""


class ProviderUnavailable(Exception):
    """The provider cannot now (rate limits, its own outage, the network): try later."""


def parse_source(source: str) -> tuple[str, str | None]:
    """``replicate:OWNER/NAME[:VERSION]`` as (``OWNER/NAME``, version or ``None``)."""
    ref = source.removeprefix(PREFIX)
    name, _, version = ref.partition(":")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", name) or (version and not version.isalnum()):
        raise ValueError(f"{source!r} is not replicate:OWNER/NAME[:VERSION]")
    return name, version or None


def steps_done(logs: str | None) -> int:
    """The last denoising step the model's logs report."""
    found = _PROGRESS.findall(logs or "")
    return int(found[-1][0]) if found else 0


class ReplicateRunner:
    def __init__(
        self,
        endpoint: str,
        token: str,
        poll_s: float = 1.0,
    ) -> None:
        self._endpoint = endpoint.rstrip("/")
        # The token goes to the API only; images come from other hosts, without it.
        self._api = httpx.Client(
            base_url=self._endpoint,
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"dreamforge/{__version__}"},
            timeout=30,
        )
        self._files = httpx.Client(timeout=60, follow_redirects=True)
        self._poll_s = poll_s
        self._woken = threading.Event()  # cuts a wait between two polls short

    @classmethod
    def of(cls, settings: Settings) -> ReplicateRunner:
        if settings.replicate_api_token is None:
            raise ValueError("the remote queue renders on Replicate: set REPLICATE_API_TOKEN first")
        token = settings.replicate_api_token.get_secret_value()
        return cls(settings.replicate_endpoint, token, settings.remote_poll_s)

    def preload(self, model: ModelRef, defaults: ModelDefaults | None = None) -> None:
        pass  # nothing to load here

    def memory(self) -> DeviceMemory | None:
        return None

    def wake(self) -> None:
        self._woken.set()

    def recycle(self) -> DeviceMemory | None:
        return None

    def stop(self) -> None:
        self._api.close()
        self._files.close()

    def render(
        self,
        request: RenderRequest,
        on_message: Callable[[RunnerMessage], None],
        tick: Callable[[], Tick],
    ) -> Outcome:
        spec = request.spec
        if spec is None:
            return Finished()
        if request.chain_step is not None:
            return Failed(ErrorCode.PROVIDER_ERROR, "chains run on local models only")
        if spec.scheduler not in SCHEDULERS:
            offered = ", ".join(s.value for s in SCHEDULERS)
            message = f"Replicate's SDXL has no {spec.scheduler.value} sampler; use {offered}"
            return Failed(ErrorCode.PROVIDER_ERROR, message)
        on_message(ModelLoaded(request.model.id, 0.0, True, "replicate", "remote"))
        for item in request.items:
            try:
                failed = self._one(request, item, on_message, tick)
            except ProviderRefused as exc:
                return Failed(ErrorCode.PROVIDER_ERROR, str(exc))
            except ProviderUnavailable as exc:
                return Failed(ErrorCode.UNAVAILABLE, str(exc))
            if failed is not None:
                return failed
        return Finished()

    def _one(
        self,
        request: RenderRequest,
        item: ItemToRender,
        on_message: Callable[[RunnerMessage], None],
        tick: Callable[[], Tick],
    ) -> Failed | None:
        assert request.spec is not None
        spec = item.spec or request.spec  # an item batched with other jobs' has its own
        name, version = parse_source(request.model.source)
        inputs = {
            "prompt": spec.prompt,
            "negative_prompt": spec.negative_prompt,
            "width": spec.width,
            "height": spec.height,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance_scale,
            "scheduler": SCHEDULERS[spec.scheduler],
            "seed": item.seed,
            "num_outputs": 1,
        }
        if version:
            created = self._call("POST", "/v1/predictions", {"version": version, "input": inputs})
        else:
            created = self._call("POST", f"/v1/models/{name}/predictions", {"input": inputs})
        prediction, reported = created, 0
        while prediction["status"] not in ("succeeded", "failed", "canceled"):
            decision = tick()
            if decision is not Tick.CONTINUE:
                self._cancel(prediction)
                if decision is Tick.KILL:
                    raise RunnerCrashed("the remote render was stopped")
                return Failed(ErrorCode.CANCELED, "canceled by request")
            self._woken.wait(self._poll_s)
            self._woken.clear()
            prediction = self._call("GET", self._url(prediction, "get"))
            step = min(steps_done(prediction.get("logs")), spec.steps)
            if step > reported:
                on_message(StepDone((item.index,), step, spec.steps))
                reported = step
        if prediction["status"] == "failed":
            raise ProviderRefused(f"Replicate failed the prediction: {prediction.get('error')}")
        if prediction["status"] == "canceled":
            return Failed(ErrorCode.CANCELED, "canceled on Replicate")
        if reported < spec.steps:  # the driver counts an item denoised at its last step
            on_message(StepDone((item.index,), spec.steps, spec.steps))
        image = self._image(prediction)
        receipt = receipt_for(
            request,
            item,
            {"dreamforge": __version__, "replicate_model": f"{name}:{version or 'latest'}"},
            "replicate",
            "remote",
        )
        started = time.perf_counter()
        png = encode_png(image, receipt)
        on_message(
            ItemRendered(
                item.index, item.seed, png, image.width, image.height, time.perf_counter() - started
            )
        )
        return None

    def _url(self, prediction: dict[str, Any], which: str) -> str:
        url = str((prediction.get("urls") or {}).get(which) or "")
        if urlsplit(url).netloc != urlsplit(self._endpoint).netloc:
            # The token goes nowhere but the endpoint the operator configured.
            return f"/v1/predictions/{prediction['id']}" + ("/cancel" if which == "cancel" else "")
        return url

    def _cancel(self, prediction: dict[str, Any]) -> None:
        # The job ends either way; the provider stops billing when it hears.
        with contextlib.suppress(ProviderRefused, ProviderUnavailable):
            self._call("POST", self._url(prediction, "cancel"))

    def _call(self, method: str, url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._api.request(method, url, json=body)
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"Replicate could not be reached: {exc}") from exc
        return _checked(response)

    def _image(self, prediction: dict[str, Any]) -> Image.Image:
        output = prediction.get("output")
        url = output[0] if isinstance(output, list) and output else output
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise ProviderRefused(f"Replicate's prediction gave no image: {output!r}")
        try:
            with self._files.stream("GET", url) as response:
                if response.status_code >= 400:
                    _checked(response)
                data = bytearray()
                for chunk in response.iter_bytes():
                    data += chunk
                    if len(data) > MAX_IMAGE_BYTES:
                        raise ProviderRefused(f"the image at {url} is over 64 MiB")
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"the image could not be fetched: {exc}") from exc
        with Image.open(io.BytesIO(bytes(data))) as image:
            return image.convert("RGB")


def _checked(response: httpx.Response) -> dict[str, Any]:
    status = response.status_code
    if status < 400:
        found: dict[str, Any] = response.json()
        return found
    response.read()
    detail = response.text[:300]
    if status in (401, 403):
        raise ProviderRefused(
            f"Replicate refused the token (HTTP {status}); check REPLICATE_API_TOKEN"
        )
    if status == 404:
        raise ProviderRefused("Replicate has no such model or version (HTTP 404)")
    if status == 429 or status >= 500:
        raise ProviderUnavailable(f"Replicate answered HTTP {status}; trying again later")
    raise ProviderRefused(f"Replicate rejected the request (HTTP {status}): {detail}")
