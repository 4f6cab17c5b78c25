"""GPU hygiene (OR-001): after every job, whatever its outcome, the device must hold no
more than the pipelines kept loaded. The runner gives back what a job left (garbage,
cached blocks) and reports; a runner still above its baseline is recycled, so that a
leak in one job never starves the next one."""

from __future__ import annotations

import structlog

from dreamforge.domain.events import EventData, LogLevel, log_event
from dreamforge.metrics import DEVICE_MEMORY
from dreamforge.runners.protocol import DeviceMemory, Runner

logger = structlog.get_logger(__name__)


def _gib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**30:.2f} GiB"


def figures(memory: DeviceMemory) -> str:
    return (
        f"{_gib(memory.allocated_bytes)} allocated, baseline {_gib(memory.baseline_bytes)}, "
        f"{_gib(memory.total_bytes)} in all on {memory.device}"
    )


def _export(memory: DeviceMemory) -> None:
    """The figures as the job left them, for /metrics (before any recycling)."""
    for kind, value in (
        ("allocated", memory.allocated_bytes),
        ("baseline", memory.baseline_bytes),
        ("total", memory.total_bytes),
        ("peak", memory.peak_bytes),
    ):
        if value is not None:
            DEVICE_MEMORY.labels(kind).set(value)


class DeviceHygiene:
    def __init__(self, runner: Runner, tolerance_bytes: int) -> None:
        self._runner = runner
        self._tolerance_bytes = tolerance_bytes

    def check(self, job_id: str, stage: str) -> list[EventData]:
        """The device after a job: the log lines for the job (none where the device
        cannot be measured, as on a CPU), recycling the runner if it stayed above its
        baseline."""
        memory = self._runner.memory()
        if memory is not None:
            _export(memory)
        excess = memory.excess_bytes if memory is not None else None
        if memory is None or excess is None:
            return []
        if excess <= self._tolerance_bytes:
            logger.info("device.clean", job_id=job_id, figures=figures(memory))
            return [log_event(f"device memory back to baseline: {figures(memory)}", stage=stage)]
        logger.warning("device.dirty", job_id=job_id, figures=figures(memory), excess=excess)
        after = self._runner.recycle()
        said = (
            f"device memory stayed {_gib(excess)} above baseline after the job "
            f"({figures(memory)}); the runner was recycled"
        )
        if after is not None:
            said += f", now {figures(after)}"
        return [log_event(said, LogLevel.WARNING, stage)]
