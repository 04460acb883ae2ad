"""The `ref` backend: the numpy golden model (golden/), the numerics the accelerator is held to.

It runs on any machine and in both numerics ("quant", the accelerator's contract, and "float"); it has no
cycle estimate, no board clock and no on-chip sampler (base.Backend's "no" values).
"""

from __future__ import annotations

import numpy as np

from ..artifact.lora_unit import manifest_lora_unit
from ..errors import RomaError
from ..golden import GoldenModel
from ..model.loader import LoadedModel
from .base import Backend


class RefBackend(Backend):
    """The golden model: `numerics` is "quant" (the accelerator's contract) or "float"."""

    clock_mhz = None
    autonomous = False
    sampler_ring = 0
    sampler_owner = None
    overlay = None

    def __init__(self, model: LoadedModel, numerics: str = "quant"):
        self.golden = GoldenModel(model, numerics)
        self.config = model.config
        self.numerics = numerics
        self.kv_dtype = self.golden.kv_dtype
        self.max_context = int(model.config.context_length)
        self.name = f"ref ({numerics})"
        # a build's LoRA unit bounds the golden model's slots as it bounds the core's, so all backends agree
        self.lora_unit = manifest_lora_unit(model.metadata["roma.build"]) if model.format == "build" else None

    def new_cache(self, capacity: int | None = None):
        return self.golden.new_cache(capacity)

    def forward(self, ids, cache) -> np.ndarray:
        return self.golden.forward(ids, cache)[-1]

    def check_lora(self, slots) -> None:
        """RomaError unless the slots fit the build's LoRA unit; a model without a build: the golden model holds
        any slot count and rank (lora.py bounds them by the model)."""
        if slots is not None and self.lora_unit is not None:
            self.lora_unit.check_slots(slots.capacity, slots.slot_rank, slots.dtype)

    def set_lora(self, slots) -> None:
        """The golden model adds the active slot's factors as stored (packed, storage-rounded)."""
        slots.apply_to(self.golden)

    def last_cycles(self) -> None:
        """The golden model has no cycle estimate."""
        return None

    def generate(self, first_id, position, n, sampling=None, seed=None, eos_id=None, *, cache, owner=None):
        raise RomaError(f"backend {self.name} has no autonomous decode (the emu and board backends do)",
                        hint="run the emu or board backend for on-chip sampling")
