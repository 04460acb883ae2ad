"""The one interface every backend implements, in full: what the engine, the bench and the CLI use of a backend.

A backend runs the model: it creates KV caches and runs `forward(ids, cache)`, which appends the tokens at
cache.length and returns the logits of the last one. A capability a backend may lack is still a member, with a
defined value for "no": `last_cycles()` is None without a cycle estimate, `clock_mhz` is None without a board,
`autonomous` is False and `generate` raises RomaError without an on-chip sampler. So a caller reads members and
never probes for them.

Data members (set by every backend):
- `name`: what the backend is called in output ("ref (quant)", "emu", "board").
- `config`: the ModelConfig it runs.
- `numerics` ("quant" or "float") and `kv_dtype` (numpy dtype of the KV cache), which a saved session records
  and checks on restore.
- `max_context`: the longest KV cache it runs: the model's context length, or less when a build holds its KV
  cache on chip (its positions); it bounds the engine's default session length.
- `clock_mhz`: the fabric clock of the board the build was placed for, which `roma bench` turns into
  estimated board tokens/s; None for the golden model.
- `autonomous`: whether `generate` runs (CMD_GENERATE: the chip samples and feeds back); `sampler_ring`: how
  many recent ids the on-chip repetition penalty sees (0 without an on-chip sampler); `sampler_owner`: who the
  on-chip sampler state belongs to after the last `generate` (its `owner`), None when nobody's.
- `overlay`: the PYNQ overlay the core runs in (device.driver.RomaOverlay), None for the golden model.
- `lora_unit`: the LoRA unit of the build it runs (artifact.lora_unit.LoraUnit, the manifest's "lora_unit": slot
  count, slot rank, target linears, storage type), which bounds the engine's LoRA slots; None for the golden model
  of a model that is not a build (no hardware bound).

Methods:
- `new_cache(capacity)`: a Cache with `capacity`, `length` and `truncate(length)` (keep positions 0..length;
  rows past it are overwritten by later tokens). For session save/restore a cache also exposes its rows,
  either as arrays `keys`/`values` [layer, position, kv_head, head_dim] or by `read_rows(n)` -> (keys,
  values) and `write_rows(keys, values)` (which also sets length); see kv.cache_rows.
- `forward(ids, cache)`.
- `check_lora(slots)`: RomaError when LoRA slots of `slots.capacity` slots at `slots.slot_rank` in `slots.dtype`
  do not fit the backend's `lora_unit`; the engine calls it when it is created.
- `set_lora(slots)`: run from now on with the active adapter of `slots` (a lora.LoraSlots), or none when
  `slots.active` is None. The engine calls it whenever the slots' `version` changed (a load, unload or
  switch), before the next forward. `slots` offers what every backend needs: `golden_adapter()` for the golden
  model, and for hardware the slot index (`active_slot`), the packed LoRA memory image of each resident slot
  (`packed(name)`, `status()`) and `version`, so a device writes a slot's image once and switches by writing
  the active-slot register.
- `last_cycles()`: {stage: estimated FPGA cycles} of the last forward or generate, from the core's status
  words; None before the first and on a backend without a cycle estimate.
- `generate(first_id, position, n, sampling, seed, eos_id, *, cache, owner)`: autonomous decode; RomaError on a
  backend that is not `autonomous`.

`Wrapper` is a backend that runs another one and forwards every member, for callers that time or count the
calls of the backend they wrap (the bench).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ..artifact.lora_unit import LoraUnit
from ..model.config import ModelConfig

if TYPE_CHECKING:  # the golden model runs without pynq: the overlay's type is only named here
    from ..device.driver import RomaOverlay


class Cache(Protocol):
    capacity: int
    length: int

    def truncate(self, length: int) -> None: ...


class Backend(ABC):
    """Where the model runs. Every data member below is set by each backend (tests/backends/test_backends.py checks)."""

    name: str
    config: ModelConfig
    numerics: str
    kv_dtype: np.dtype
    max_context: int
    clock_mhz: float | None
    autonomous: bool
    sampler_ring: int
    sampler_owner: object | None
    overlay: RomaOverlay | None
    lora_unit: LoraUnit | None

    @abstractmethod
    def new_cache(self, capacity: int | None = None) -> Cache: ...

    @abstractmethod
    def forward(self, ids: list[int], cache: Cache) -> np.ndarray: ...

    @abstractmethod
    def check_lora(self, slots) -> None: ...

    @abstractmethod
    def set_lora(self, slots) -> None: ...

    @abstractmethod
    def last_cycles(self) -> dict[str, int] | None: ...

    @abstractmethod
    def generate(self, first_id: int, position: int, n: int, sampling=None, seed: int | None = None,
                 eos_id: int | None = None, *, cache: Cache, owner=None) -> list[int]: ...


class Wrapper(Backend):
    """Runs `inner` and forwards every member to it; a subclass overrides the calls it wants to see."""

    def __init__(self, inner: Backend):
        self.inner = inner

    # the data members, read through: sampler_owner changes with every generate of the inner backend
    name = property(lambda self: self.inner.name)
    config = property(lambda self: self.inner.config)
    numerics = property(lambda self: self.inner.numerics)
    kv_dtype = property(lambda self: self.inner.kv_dtype)
    max_context = property(lambda self: self.inner.max_context)
    clock_mhz = property(lambda self: self.inner.clock_mhz)
    autonomous = property(lambda self: self.inner.autonomous)
    sampler_ring = property(lambda self: self.inner.sampler_ring)
    sampler_owner = property(lambda self: self.inner.sampler_owner)
    overlay = property(lambda self: self.inner.overlay)
    lora_unit = property(lambda self: self.inner.lora_unit)

    def new_cache(self, capacity: int | None = None) -> Cache:
        return self.inner.new_cache(capacity)

    def forward(self, ids, cache) -> np.ndarray:
        return self.inner.forward(ids, cache)

    def check_lora(self, slots) -> None:
        self.inner.check_lora(slots)

    def set_lora(self, slots) -> None:
        self.inner.set_lora(slots)

    def last_cycles(self) -> dict[str, int] | None:
        return self.inner.last_cycles()

    def generate(self, first_id, position, n, sampling=None, seed=None, eos_id=None, *, cache, owner=None):
        return self.inner.generate(first_id, position, n, sampling, seed, eos_id, cache=cache, owner=owner)
