"""Readiness: whether each dependency (database, queue, storage) answers."""

from __future__ import annotations

from collections.abc import Callable, Mapping


class Readiness:
    def __init__(self, probes: Mapping[str, Callable[[], None]]) -> None:
        self._probes = probes

    def check(self) -> dict[str, str]:
        """``ok`` or ``error: …`` for each dependency."""
        return {name: _outcome(probe) for name, probe in self._probes.items()}


def _outcome(probe: Callable[[], None]) -> str:
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
        return f"error: {exc}"
    return "ok"
