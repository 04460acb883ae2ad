"""Backends run the model; the engine talks to all of them through one small interface.

A backend creates KV caches and runs `forward(ids, cache)`: append the tokens at cache.length and return the
logits of the last one. `ref` is the numpy golden model; `emu` (the HLS C simulation behind the emulated
board) and `board` (a PYNQ overlay) implement the same interface.

The interface, in full:
- `name`, `config`; `numerics` ("quant" or "float") and `kv_dtype` (numpy dtype of the KV cache), which a
  saved session records and checks on restore.
- `new_cache(capacity)`: a Cache with `capacity`, `length` and `truncate(length)` (keep positions 0..length;
  rows past it are overwritten by later tokens). For session save/restore a cache also exposes its rows,
  either as arrays `keys`/`values` [layer, position, kv_head, head_dim] or by `read_rows(n)` -> (keys,
  values) and `write_rows(keys, values)` (which also sets length); see kv.cache_rows.
- `forward(ids, cache)`.
- `set_lora(slots)`: run from now on with the active adapter of `slots` (a lora.LoraSlots), or none when
  `slots.active` is None. The engine calls it whenever the slots' `version` changed (a load, unload or switch),
  before the next forward. `slots` offers what every backend needs: `golden_adapter()` for the golden model,
  and for hardware the slot index (`active_slot`), the packed LoRA memory image of each resident slot
  (`packed(name)`, `status()`) and `version`, so a device writes a slot's image once and switches by writing
  the active-slot register.
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

    def set_lora(self, slots) -> None: ...


class RefBackend:
    """The golden model: `numerics` is "quant" (the accelerator's contract) or "float"."""

    def __init__(self, model: LoadedModel, numerics: str = "quant"):
        from .golden import GoldenModel

        self.golden = GoldenModel(model, numerics)
        self.config = model.config
        self.numerics = numerics
        self.kv_dtype = self.golden.kv_dtype
        self.name = f"ref ({numerics})"

    def new_cache(self, capacity: int | None = None):
        return self.golden.new_cache(capacity)

    def forward(self, ids, cache) -> np.ndarray:
        return self.golden.forward(ids, cache)[-1]

    def set_lora(self, slots) -> None:
        """The golden model adds the active slot's factors as stored (packed, storage-rounded)."""
        slots.apply_to(self.golden)


def check_backend(name: str) -> None:
    """Refuses an unknown or unavailable backend before any model is loaded."""
    if name not in BACKENDS:
        raise RomaError(f"unknown backend '{name}'", hint=f"choose one of {', '.join(BACKENDS)}")
    if name != "ref":
        raise RomaError(f"backend '{name}' is not available yet", hint="use --backend ref")


def create_backend(name: str, model: LoadedModel, numerics: str = "quant") -> Backend:
    check_backend(name)
    return RefBackend(model, numerics)
