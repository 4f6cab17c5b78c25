"""How often a runner reports denoising steps: at most every ``progress_interval_s``, the
first and last step of each micro-batch always."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dreamforge.domain.errors import ErrorCode
from dreamforge.runners.process import SdxlProcessRunner
from dreamforge.runners.protocol import (
    Failed,
    ItemRendered,
    ItemToRender,
    RenderRequest,
    RunnerMessage,
    StepDone,
    StepReports,
    Tick,
)
from tests.helpers import tiny_model_ref, tiny_spec


def reported(
    interval_s: float, messages: list[RunnerMessage], times: Iterator[float]
) -> list[object]:
    sent: list[RunnerMessage] = []
    reports = StepReports(interval_s, sent.append, clock=lambda: next(times))
    for message in messages:
        reports(message)
    return [m.step if isinstance(m, StepDone) else m for m in sent]


def test_steps_faster_than_the_interval_are_folded_into_the_next_report() -> None:
    # Two micro-batches of 10 steps, one step every 40 ms, reported at most every 100 ms.
    image = ItemRendered(0, 7, b"png", 64, 64)
    first = [StepDone((0,), step, 10) for step in range(1, 11)]
    second = [StepDone((1,), step, 10) for step in range(1, 11)]
    messages: list[RunnerMessage] = [*first, image, *second]
    times = iter([0.04 * tick for tick in range(1, 21)])
    assert reported(0.1, messages, times) == [1, 4, 7, 10, image, 1, 4, 7, 10]


def test_an_interval_of_zero_reports_every_step() -> None:
    steps = [StepDone((0,), step, 5) for step in range(1, 6)]
    assert reported(0.0, list(steps), iter([1.0] * 5)) == [1, 2, 3, 4, 5]


def steps_reported(runner: SdxlProcessRunner, request: RenderRequest) -> list[int]:
    steps: list[int] = []
    runner.render(
        request,
        lambda m: steps.append(m.step) if isinstance(m, StepDone) else None,
        lambda: Tick.CONTINUE,
    )
    return steps


def test_the_pipeline_process_reports_steps_as_often_as_asked(tiny_model_dir: Path) -> None:
    spec = tiny_spec(steps=4, seed=3, item_seeds=(3,))
    items = (ItemToRender(0, 3),)
    model = tiny_model_ref(tiny_model_dir)
    runner = SdxlProcessRunner("cpu")
    try:
        every = steps_reported(runner, RenderRequest(spec, model, items))
        hourly = RenderRequest(spec, model, items, progress_interval_s=3600)
        assert (every, steps_reported(runner, hourly)) == ([1, 2, 3, 4], [1, 4])
    finally:
        runner.stop()


def test_a_woken_pipeline_process_is_asked_at_once_and_a_cancel_stops_it(
    tiny_model_dir: Path,
) -> None:
    # Silent between its first and last step, and ticked only every 60 s when silent:
    # only a wake can get the cancel to it before the 400 steps are done.
    spec = tiny_spec(steps=400, seed=3, item_seeds=(3,))
    request = RenderRequest(
        spec, tiny_model_ref(tiny_model_dir), (ItemToRender(0, 3),), progress_interval_s=3600
    )
    runner = SdxlProcessRunner("cpu")
    canceled = threading.Event()
    woken_at: list[float] = []
    ticked_at: list[float] = []

    def cancel_soon(message: RunnerMessage) -> None:
        if isinstance(message, StepDone) and message.step == 1:
            threading.Timer(
                0.3, lambda: (canceled.set(), woken_at.append(time.monotonic()), runner.wake())
            ).start()

    def tick() -> Tick:
        if canceled.is_set():
            ticked_at.append(time.monotonic())
            return Tick.CANCEL
        return Tick.CONTINUE

    try:
        outcome = runner.render(request, cancel_soon, tick, poll_s=60)
    finally:
        runner.stop()
    assert isinstance(outcome, Failed) and outcome.code is ErrorCode.CANCELED
    assert ticked_at and ticked_at[0] - woken_at[0] < 5


def semaphores() -> set[str]:
    """Named POSIX semaphores on this machine (multiprocessing's locks, with forkserver)."""
    return {p.name for p in Path("/dev/shm").glob("sem.mp-*")}


def test_a_killed_pipeline_process_leaves_no_semaphore_behind(tiny_model_dir: Path) -> None:
    # A child that is killed (recycled, or past its time limit) runs no finalizers: a lock
    # of its own would stay on the machine until the server stops, one per child.
    before = semaphores()
    runner = SdxlProcessRunner("cpu")
    try:
        spec = tiny_spec(steps=2, seed=3, item_seeds=(3,))
        steps_reported(
            runner, RenderRequest(spec, tiny_model_ref(tiny_model_dir), (ItemToRender(0, 3),))
        )
        runner.kill()
        assert semaphores() - before == set()
    finally:
        runner.stop()
