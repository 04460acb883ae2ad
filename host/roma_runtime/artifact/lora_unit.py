"""The LoRA unit a build reserves: how many adapter slots the core has, their rank, which linears have LoRA memory
and how it stores the factors. `roma compile` chooses it (--lora-slots, --lora-slot-rank, --lora-targets,
--lora-dtype; the board's default in boards.json "lora_unit"), the plan counts its memory, the manifest records
it ("lora_unit") and roma_model.h gives it to the core (LORA_SLOTS, LORA_RANK, LORA_TARGET, LORA_INT8). The host
packs adapters at its slot rank and storage type and refuses what it cannot hold (lora.LoraSlots).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import RomaError
from ..model.weights import LayerWeights

LINEARS = LayerWeights.LINEAR  # wq wk wv wo w_gate w_up w_down: the linears a LoRA unit may adapt
DTYPES = ("fp16", "int8")


@dataclass(frozen=True)
class LoraUnit:
    """`slots` slots (0: no LoRA unit) of slot rank `rank`, with memory for the `targets` linears, `dtype` fp16
    values or int8 codes with fp32 row scales."""

    slots: int
    rank: int
    targets: tuple[str, ...]
    dtype: str

    @classmethod
    def from_dict(cls, entry, where: str) -> "LoraUnit":
        """A unit from its JSON form ({slots, rank, targets, dtype}; other keys ignored); RomaError naming `where`
        when a field is missing or wrong."""
        if not isinstance(entry, dict):
            raise RomaError(f"{where}: the LoRA unit must be an object {{slots, rank, targets, dtype}}, not {entry!r}")
        for key in ("slots", "rank", "targets", "dtype"):
            if key not in entry:
                raise RomaError(f"{where}: the LoRA unit lacks '{key}'")
        targets = entry["targets"]
        if not isinstance(targets, (list, tuple)):
            raise RomaError(f"{where}: the LoRA unit's targets must be a list of linears, not {targets!r}")
        return cls.make(entry["slots"], entry["rank"], targets, entry["dtype"], where)

    @classmethod
    def make(cls, slots, rank, targets, dtype, where: str = "the LoRA unit") -> "LoraUnit":
        """A checked unit: slots and rank integers >= 0 (a unit with slots has a rank >= 1 and a target), targets
        among LINEARS (kept in their order), dtype fp16 or int8."""
        for name, v in (("slot count", slots), ("slot rank", rank)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise RomaError(f"{where}: the LoRA {name} must be an integer >= 0, not {v!r}")
        bad = [t for t in targets if t not in LINEARS]
        if bad:
            raise RomaError(f"{where}: unknown LoRA target(s) {', '.join(map(str, bad))}",
                            hint=f"targets are {', '.join(LINEARS)}")
        if dtype not in DTYPES:
            raise RomaError(f"{where}: unsupported LoRA dtype {dtype!r}", hint=f"use {' or '.join(DTYPES)}")
        if slots and (rank < 1 or not targets):
            raise RomaError(f"{where}: a LoRA unit with {slots} slot(s) needs a slot rank >= 1 and at least one "
                            "target linear", hint="or 0 slots for no LoRA unit")
        return cls(slots, rank, tuple(t for t in LINEARS if t in targets), dtype)

    def to_dict(self) -> dict:
        return {"slots": self.slots, "rank": self.rank, "targets": list(self.targets), "dtype": self.dtype}

    def check_slots(self, capacity: int, slot_rank: int, dtype: str) -> None:
        """RomaError unless `capacity` slots of rank `slot_rank` in `dtype` fit this unit (what an engine asks of a
        build), naming the unit and the `roma compile` option that would make room."""
        if capacity and not self.slots:
            raise RomaError(f"{capacity} LoRA slot{'s' if capacity != 1 else ''} asked, but this build has no LoRA "
                            "unit (it was compiled with --lora-slots 0)",
                            hint="recompile the build with roma compile --lora-slots 1 (or more), or run without "
                                 "adapters")
        if capacity > self.slots:
            raise RomaError(f"{capacity} LoRA slot{'s' if capacity != 1 else ''} asked, but this build's LoRA unit "
                            f"has {self.describe()}",
                            hint=f"use at most {self.slots} (--lora-slots), or recompile the build with "
                                 f"roma compile --lora-slots {capacity}")
        if slot_rank > self.rank:
            raise RomaError(f"a LoRA slot rank of {slot_rank} is above this build's LoRA unit ({self.describe()})",
                            hint=f"use --lora-rank {self.rank} or less, or recompile the build with roma compile "
                                 f"--lora-slot-rank {slot_rank}")
        if dtype != self.dtype:
            raise RomaError(f"LoRA slots of {dtype} asked, but this build's LoRA unit stores {self.dtype} "
                            f"({self.describe()})",
                            hint=f"use --lora-dtype {self.dtype}, or recompile the build with roma compile "
                                 f"--lora-dtype {dtype}")

    def describe(self) -> str:
        """'1 slot of rank 16 on wq wk wv wo w_gate w_up w_down, fp16', or 'no LoRA unit'."""
        if not self.slots:
            return "no LoRA unit"
        return (f"{self.slots} slot{'s' if self.slots != 1 else ''} of rank {self.rank} on {' '.join(self.targets)}, "
                f"{self.dtype}")


def manifest_lora_unit(manifest: dict) -> LoraUnit:
    """The LoRA unit a build's manifest records ("lora_unit")."""
    return LoraUnit.from_dict(manifest.get("lora_unit"), "the build's manifest")
