"""Pipelines kept loaded between jobs, under a memory budget, least recently used first
out. A model's size is estimated from its registered files before it is loaded, so room
is made before the load, not after an out-of-memory error."""

from __future__ import annotations

import gc
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Resident:
    sha256: str
    pipe: Any
    scheduler_config: Any
    size_bytes: int


class ResidentPipelines:
    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._pipelines: OrderedDict[str, Resident] = OrderedDict()

    def get(self, model_id: str, sha256: str) -> Resident | None:
        """The loaded pipeline of these exact weights, now the most recently used."""
        found = self._pipelines.get(model_id)
        if found is None or found.sha256 != sha256:
            return None
        self._pipelines.move_to_end(model_id)
        return found

    def make_room(self, model_id: str, size_bytes: int) -> list[str]:
        """Unload least recently used pipelines until ``size_bytes`` more fit (all of them,
        if it is larger than the budget alone); the ids unloaded."""
        evicted = []
        if self._pipelines.pop(model_id, None) is not None:
            evicted.append(model_id)  # other weights under the same id
        while self._pipelines and self.used_bytes + size_bytes > self.budget_bytes:
            evicted.append(self._pipelines.popitem(last=False)[0])
        if evicted:
            gc.collect()  # the device memory goes back only once nothing refers to it
        return evicted

    def add(self, model_id: str, resident: Resident) -> None:
        self._pipelines[model_id] = resident

    @property
    def used_bytes(self) -> int:
        return sum(r.size_bytes for r in self._pipelines.values())

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._pipelines
