"""Backends run the model; the engine talks to all of them through one small interface.

A backend creates KV caches and runs `forward(ids, cache)`: append the tokens at cache.length and return the
logits of the last one. `ref` is the numpy golden model; `emu` (the HLS C simulation behind the emulated
board) and `board` (a PYNQ overlay) implement the same interface.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .errors import RomaError
from .model import LoadedModel, ModelConfig

BACKENDS = ("ref", "emu", "board")


class Cache(Protocol):
    capacity: int
    length: int

    def truncate(self, length: int) -> None: ...


class Backend(Protocol):
    name: str
    config: ModelConfig

    def new_cache(self, capacity: int | None = None) -> Cache: ...

    def forward(self, ids: list[int], cache: Cache) -> np.ndarray: ...


class RefBackend:
    """The golden model: `numerics` is "quant" (the accelerator's contract) or "float"."""

    def __init__(self, model: LoadedModel, numerics: str = "quant"):
        from .golden import GoldenModel

        self.golden = GoldenModel(model, numerics)
        self.config = model.config
        self.name = f"ref ({numerics})"

    def new_cache(self, capacity: int | None = None):
        return self.golden.new_cache(capacity)

    def forward(self, ids, cache) -> np.ndarray:
        return self.golden.forward(ids, cache)[-1]


def check_backend(name: str) -> None:
    """Refuses an unknown or unavailable backend before any model is loaded."""
    if name not in BACKENDS:
        raise RomaError(f"unknown backend '{name}'", hint=f"choose one of {', '.join(BACKENDS)}")
    if name != "ref":
        raise RomaError(f"backend '{name}' is not available yet", hint="use --backend ref")


def create_backend(name: str, model: LoadedModel, numerics: str = "quant") -> Backend:
    check_backend(name)
    return RefBackend(model, numerics)
