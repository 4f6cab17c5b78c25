"""Batches: `count` items, a seed each, rendered in micro-batches on the device."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from dreamforge.artifacts.receipts import read_receipt
from dreamforge.domain.jobs import JobStatus
from dreamforge.runners.device import (
    DeviceChoice,
    InsufficientMemory,
    check_headroom,
    fit_batch,
    free_memory,
    select_device,
    settle,
)
from dreamforge.runners.fake import FakeRunner, Plan, Trouble
from dreamforge.runners.protocol import (
    ItemRendered,
    ItemToRender,
    RenderRequest,
    StepDone,
)
from dreamforge.runners.sdxl import DeviceFull, SdxlRunner
from tests.conftest import LiveServer
from tests.helpers import (
    assert_matches_golden,
    run_to_end,
    submit,
    tiny_model_ref,
    tiny_spec,
    wait_for,
)
from tests.test_lifecycle import FakeServer, fake, lifecycle  # noqa: F401 - the fixture

BATCH = {"prompt": "four foxes", "negative_prompt": "snow", "seed": 500, "count": 4, "steps": 3}


def pixels(png: bytes) -> np.ndarray[Any, Any]:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def test_a_batch_gives_each_item_its_seed_key_receipt_and_pixels(live: LiveServer) -> None:
    job, events = run_to_end(live.client, **BATCH)
    assert job["status"] == "succeeded" and job["spec"]["count"] == 4
    assert job["spec"]["item_seeds"] == [500, 501, 502, 503]
    listed = live.client.get(job["links"]["artifacts"]).json()["data"]
    assert [a["key"] for a in listed] == [
        f"jobs/{job['id']}/00-generate/{i:03d}.png" for i in range(4)
    ]
    assert [a["seed"] for a in listed] == [500, 501, 502, 503]
    for artifact in listed:
        png = httpx.get(artifact["url"]).content
        assert read_receipt(png).seed == artifact["seed"]
        assert read_receipt(png).item_index == artifact["item_index"]
        # The four images of BATCH on a CPU, rendered together (one micro-batch of 4).
        assert_matches_golden(png, f"batch-{artifact['item_index']}")
    assert [e.data["item_index"] for e in events if e.type == "artifact"] == [0, 1, 2, 3]
    batched = [e.data["items"] for e in events if e.type == "progress" and "items" in e.data]
    assert [0, 1, 2, 3] in batched  # all four denoised together (max_batch_size 4)


def test_omitted_seeds_are_drawn_one_per_item(live: LiveServer) -> None:
    job = submit(live.client, count=3, steps=2)
    seeds = job["spec"]["item_seeds"]
    assert len(set(seeds)) == 3 and job["spec"]["seed"] == seeds[0]
    wait_for(live.client, job["id"], {"succeeded"})
    listed = live.client.get(job["links"]["artifacts"]).json()["data"]
    assert [a["seed"] for a in listed] == seeds


def test_an_item_rendered_alone_matches_its_batched_render(tiny_model_dir: Path) -> None:
    """Item i of a batch and item i alone share their noise (a generator each); only the
    order of floating-point sums inside batched matrix products differs. Measured on this
    CPU: at most 1 level of 255 on any pixel (docs/batches.md); the bound is 2."""
    runner = SdxlRunner(select_device("cpu"))
    model = tiny_model_ref(tiny_model_dir)
    spec = tiny_spec(
        negative_prompt="blurry",
        width=96,
        steps=3,
        scheduler="euler_a",
        count=4,
        item_seeds=(5, 6, 7, 8),
    )
    items = tuple(ItemToRender(i, 5 + i) for i in range(4))

    def render(chosen: tuple[ItemToRender, ...], batch: int) -> dict[int, np.ndarray[Any, Any]]:
        out: list[object] = []
        runner.generate(RenderRequest(spec, model, chosen, max_batch=batch), out.append, bool)
        return {m.item_index: pixels(m.png) for m in out if isinstance(m, ItemRendered)}

    together = render(items, 4)
    for item in items:
        alone = render((item,), 1)[item.index]
        difference = np.abs(together[item.index] - alone)
        assert difference.max() <= 2 and difference.mean() < 0.05, item
    assert len({together[i].tobytes() for i in range(4)}) == 4  # four different images


def test_a_micro_batchs_images_are_encoded_at_once_and_sent_in_item_order(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The device waits for a batch's last image before the next request, so its PNGs are
    encoded on several threads (Pillow lets go of the GIL while it compresses). Each
    encode is slowed down to be seen overlapping, the first item's most: it still comes
    first."""
    import dreamforge.runners.sdxl as sdxl

    encoding, most = 0, 0
    lock = threading.Lock()
    encode_png = sdxl.encode_png

    def slowed(image: Image.Image, receipt: Any) -> bytes:
        nonlocal encoding, most
        with lock:
            encoding += 1
            most = max(most, encoding)
        time.sleep(0.6 if receipt.item_index == 0 else 0.2)
        try:
            return encode_png(image, receipt)
        finally:
            with lock:
                encoding -= 1

    monkeypatch.setattr(sdxl, "encode_png", slowed)
    runner = SdxlRunner(select_device("cpu"), encode_threads=4)
    spec = tiny_spec(count=4, steps=2, item_seeds=(5, 6, 7, 8))
    items = tuple(ItemToRender(i, 5 + i) for i in range(4))
    out: list[object] = []
    request = RenderRequest(spec, tiny_model_ref(tiny_model_dir), items, max_batch=4)
    runner.generate(request, out.append, bool)
    assert most == 4  # one thread each
    rendered = [m for m in out if isinstance(m, ItemRendered)]
    assert [m.item_index for m in rendered] == [0, 1, 2, 3]
    assert [read_receipt(m.png).seed for m in rendered] == [5, 6, 7, 8]


@pytest.mark.parametrize("count", [0, 101])
def test_count_is_between_1_and_100(live: LiveServer, count: int) -> None:
    response = live.client.post("/v1/jobs", json={"prompt": "x", "count": count})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["count"]


# -- on the fake runner: failures, cancel and retries in the middle of a batch -----------


def test_a_failing_item_keeps_the_ones_before_it_and_says_which(fake: FakeServer) -> None:  # noqa: F811
    fake.runner.plans = {**fake.runner.plans, "third fails": Plan(Trouble.FAIL, 1, at_item=2)}
    job = submit(fake.client, prompt="third fails", count=4, steps=3)
    done = wait_for(fake.client, job["id"], {"failed"})
    assert done["error"]["code"] == "RUNNER_ERROR"
    assert "2 of 4 item(s) not rendered; the 2 stored are kept" in done["error"]["message"]
    listed = fake.client.get(job["links"]["artifacts"]).json()["data"]
    assert [a["item_index"] for a in listed] == [0, 1]


def test_a_batch_canceled_midway_keeps_its_finished_items(fake: FakeServer) -> None:  # noqa: F811
    job = submit(fake.client, prompt="many", count=10, steps=20)  # 0.2 s an item
    deadline = time.monotonic() + 10
    while len(fake.client.get(job["links"]["artifacts"]).json()["data"]) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    fake.client.post(job["links"]["cancel"])
    done = wait_for(fake.client, job["id"], {"canceled"})
    kept = [a["item_index"] for a in fake.client.get(job["links"]["artifacts"]).json()["data"]]
    assert done["error"] is None and 2 <= len(kept) < 10
    assert kept == list(range(len(kept)))


def test_a_requeued_batch_renders_only_the_missing_items(fake: FakeServer) -> None:  # noqa: F811
    template = fake.runtime.jobs.get(submit(fake.client, prompt="template")["id"])
    assert template is not None
    spec = template.spec.model_copy(
        update={"prompt": "resumed", "count": 4, "item_seeds": (1, 2, 3, 4), "steps": 10}
    )
    job_id = str(uuid.uuid4())
    fake.runtime.jobs.create(job_id, spec, [])
    first = FakeRunner(step_s=0.02)  # 0.2 s an item
    thread = threading.Thread(target=lifecycle(fake, "first", first).run, args=(job_id,))
    thread.start()
    deadline = time.monotonic() + 10
    while len(fake.runtime.jobs.artifacts(job_id)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    fake.runtime.reaper.requeue_orphans(expired_before=None)  # its worker is "lost"
    thread.join(5)
    stored_first = {a.item_index for a in fake.runtime.jobs.artifacts(job_id)}

    second = FakeRunner()
    assert lifecycle(fake, "second", second).run(job_id) is JobStatus.SUCCEEDED
    assert sorted(seed for _, seed in second.rendered) == sorted(
        {1, 2, 3, 4} - {i + 1 for i in stored_first}
    )
    assert [a.item_index for a in fake.runtime.jobs.artifacts(job_id)] == [0, 1, 2, 3]


def test_a_micro_batch_fits_the_free_device_memory() -> None:
    gib = 2**30
    assert fit_batch(8, None, 1024, 1024) == 8  # a CPU: the configured size
    assert fit_batch(8, 80 * gib, 1024, 1024) == 8
    assert fit_batch(8, 10 * gib, 1024, 1024) == 2  # ~3 GB an item at 1024x1024
    assert fit_batch(8, 10 * gib, 512, 512) == 8
    assert fit_batch(8, 1 * gib, 1024, 1024) == 1  # never zero: OOM halving is the backstop
    check_headroom(None, None, 4096, 4096)  # a CPU: nothing to measure, nothing refused
    check_headroom(3 * gib, 24 * gib, 1024, 1024)  # ~2.9 GiB needed
    with pytest.raises(InsufficientMemory, match=r"1024x1024 image needs about 2\.9 GiB"):
        check_headroom(2 * gib, 24 * gib, 1024, 1024)


class CachingAllocator:
    """A GPU's memory as torch's caching allocator reports it: blocks a request freed stay
    reserved by the process until ``empty_cache`` gives them back to the driver."""

    def __init__(self, total: int) -> None:
        self.total, self.allocated, self.reserved = total, 0, 0

    def mem_get_info(self, _device: object = None) -> tuple[int, int]:
        return self.total - self.reserved, self.total

    def memory_reserved(self, _device: object = None) -> int:
        return self.reserved

    def memory_allocated(self, _device: object = None) -> int:
        return self.allocated

    def empty_cache(self) -> None:
        self.reserved = self.allocated

    def synchronize(self, _device: object = None) -> None:
        pass


def test_a_request_leaves_its_freed_memory_cached_for_the_next_and_counted_free(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gib = 2**30
    gpu = CachingAllocator(total=24 * gib)
    for name in (
        "mem_get_info",
        "memory_reserved",
        "memory_allocated",
        "empty_cache",
        "synchronize",
    ):
        monkeypatch.setattr(torch.cuda, name, getattr(gpu, name))
    cuda = DeviceChoice(torch.device("cuda"), torch.float16)
    gpu.allocated = 7 * gib  # the model
    gpu.reserved = 19 * gib  # and the activations of the request that just ended

    settle(cuda)

    assert gpu.reserved == 19 * gib  # the next request reuses them, no cudaMalloc
    free, total = free_memory(cuda)
    assert (free, total) == (17 * gib, 24 * gib)
    assert fit_batch(8, free, 1024, 1024) == 4  # as many as an emptied cache would allow


class SmallDevice:
    """The real pipeline on a device that runs out of memory above ``fits`` images at
    once: the out-of-memory error of a GPU, where there is none."""

    def __init__(self, pipe: Any, fits: int) -> None:
        object.__setattr__(self, "_pipe", pipe)
        object.__setattr__(self, "_fits", fits)
        object.__setattr__(self, "calls", [])

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append(len(kwargs["prompt"]))
        if len(kwargs["prompt"]) > self._fits:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self._pipe(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipe, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._pipe, name, value)


def test_a_micro_batch_that_runs_out_of_memory_is_halved(tiny_model_dir: Path) -> None:
    runner = SdxlRunner(select_device("cpu"))
    model = tiny_model_ref(tiny_model_dir)
    spec = tiny_spec(count=5, item_seeds=(5, 6, 7, 8, 9))
    items = tuple(ItemToRender(i, 5 + i) for i in range(5))
    runner.generate(RenderRequest(spec, model, (), max_batch=1), lambda _: None, bool)  # load
    resident = runner._resident.get(model.id, model.sha256)
    assert resident is not None
    pipe = resident.pipe
    device = SmallDevice(pipe, fits=2)
    runner._resident.add(model.id, dataclasses.replace(resident, pipe=device))

    out: list[object] = []
    runner.generate(RenderRequest(spec, model, items, max_batch=4), out.append, bool)
    assert device.calls == [4, 2, 2, 1]  # 4 did not fit; then halves, then what is left
    batches = sorted({m.items for m in out if isinstance(m, StepDone)})
    assert batches == [(0, 1), (2, 3), (4,)]
    rendered = [m.item_index for m in out if isinstance(m, ItemRendered)]
    assert sorted(rendered) == [0, 1, 2, 3, 4]

    device = SmallDevice(pipe, fits=0)  # not even one image: the job's GPU_OOM
    runner._resident.add(model.id, dataclasses.replace(resident, pipe=device))
    with pytest.raises(DeviceFull, match=r"one 64x64 image .* halved down to 1") as raised:
        runner.generate(RenderRequest(spec, model, items, max_batch=4), lambda _: None, bool)
    assert isinstance(raised.value.__cause__, torch.OutOfMemoryError)  # what the child reports
    assert device.calls == [4, 2, 1]
