"""What the emu and board backends share: roma_core behind a RomaOverlay (device.driver) as a backend.

`CoreBackend` runs the Backend interface on the overlay's core: a KV cache is a DDR buffer of its own
(`CoreCache`), forward is CMD_PREFILL/CMD_DECODE, generate is CMD_GENERATE (autonomous decode), LoRA slots are
written once and switched by the active-slot register, and the core's cycle counter registers give the cycle
estimate of every call. The subclasses say which device the overlay is on (emulated.py, board.py).
"""

from __future__ import annotations

import numpy as np

from ..artifact.boards import get_board
from ..artifact.lora_unit import manifest_lora_unit
from ..device.driver import KVBuffer, RomaOverlay
from ..errors import RomaError
from .base import Backend


class CoreCache:
    """A KV cache of the core: owns its DDR buffer (device.driver.KVBuffer); `length` positions are filled."""

    def __init__(self, kv: KVBuffer, config):
        self.kv, self.config = kv, config
        self.capacity = kv.capacity
        self.length = 0

    def truncate(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} positions to {length}")
        self.length = length

    def read_rows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Copies of keys and values at positions 0..n, [layer, position, kv_head, head_dim] fp16."""
        c = self.config
        rows = self.kv.rows(n).view(np.float16)
        shape = (c.n_layers, n, c.n_kv_heads, c.head_dim)
        return rows[:, 0].reshape(shape).copy(), rows[:, 1].reshape(shape).copy()

    def write_rows(self, keys: np.ndarray, values: np.ndarray) -> None:
        n = keys.shape[1]
        if n > self.capacity:
            raise RomaError(f"{n} positions do not fit the KV cache of {self.capacity}")
        c = self.config
        rows = np.stack([np.asarray(keys, np.float16).reshape(c.n_layers, n, c.kv_dim),
                         np.asarray(values, np.float16).reshape(c.n_layers, n, c.kv_dim)], axis=1)
        self.kv.write_rows(rows.view(np.uint16))
        self.length = n


_UNKNOWN = object()  # the core's active LoRA slot is not known (a select failed halfway)


class CoreBackend(Backend):
    """The Backend interface on a RomaOverlay's core; a subclass calls _setup(overlay) and sets `name`."""

    numerics = "quant"
    kv_dtype = np.dtype(np.float16)
    autonomous = True

    def _setup(self, overlay: RomaOverlay) -> None:
        self.overlay = overlay
        self.core = overlay.core
        self.config = overlay.config
        self.manifest = overlay.manifest
        self.clock_mhz = board_clock(self.manifest)
        self.max_context = self.core.max_context  # the longest session: the on-chip KV, else the context
        self.lora_unit = manifest_lora_unit(self.manifest)  # the build's LoRA unit: slots, rank, targets, dtype
        self._slots = None                       # the engine's LoraSlots last applied
        self._lora_loaded: dict = {}            # slot -> the PackedLora whose image the core holds there
        self._lora_active = _UNKNOWN             # the slot selected on the core (_UNKNOWN: select again)
        self._cycles: dict[str, int] | None = None
        self.sampler_owner = None                # who the on-chip sampler state (PRNG, recent ids) belongs to
        self.sampler_ring = int(self.core.constants["SAMPLER_RING"])
        self.sampler_k = int(self.core.constants["SAMPLER_K"])

    def _ensure(self) -> None:
        """Hook: make sure this backend's overlay is the one on the device (the emulated board switches)."""

    def new_cache(self, capacity: int | None = None) -> CoreCache:
        return CoreCache(self.core.new_kv(capacity), self.config)

    def check_lora(self, slots) -> None:
        """RomaError unless the engine's LoRA slots fit the build's LoRA unit (the manifest's "lora_unit":
        roma_model.h's LORA_SLOTS slots of rank LORA_RANK, fp16 or int8) and are for this model."""
        if slots is None:
            return
        self.lora_unit.check_slots(slots.capacity, slots.slot_rank, slots.dtype)
        if slots.config.n_layers != self.config.n_layers or slots.config.dim != self.config.dim:
            raise RomaError("the LoRA slots were made for another model than the one on the core")

    def set_lora(self, slots) -> None:
        """Bring the core's LoRA state to `slots`: write a slot's packed image (CMD_LOAD_LORA) only when that
        slot's contents changed since it was last written, then, when it changed, the active slot register
        (CMD_SELECT_LORA). A hot swap between resident adapters is therefore one register write, as on the
        board. A slot's contents are identified by its PackedLora object: LoraSlots.load makes a new one on
        every load (also when a name is reloaded into its slot), and the reference kept here stops the object
        (and its id) from being reused while the core holds its image."""
        self.check_lora(slots)
        self._ensure()
        loaded = False
        for row in slots.status():
            slot = row["slot"]
            if row["name"] is None:  # an empty slot: the core's copy is stale but cannot be selected
                self._lora_loaded.pop(slot, None)
                continue
            packed = slots.packed(row["name"])
            if self._lora_loaded.get(slot) is packed:
                continue
            self._lora_loaded.pop(slot, None)  # until the write has succeeded
            self.core.load_lora(slot, packed.to_bytes())
            self._lora_loaded[slot] = packed
            loaded = True
        active = slots.active_slot
        if loaded or active != self._lora_active or self._lora_active is _UNKNOWN:
            self._lora_active = _UNKNOWN
            self.core.select_lora(active)
            self._lora_active = active
        self._slots = slots

    def generate(self, first_id: int, position: int, n: int, sampling=None, seed: int | None = None,
                 eos_id: int | None = None, *, cache: CoreCache, owner=None) -> list[int]:
        """Autonomous decode (CMD_GENERATE) in `cache`: run first_id at `position` (== cache.length), then
        sample and feed back on chip until n tokens are sampled or eos_id is; returns the sampled ids. Every
        position run is appended to the cache (one per returned id: the last sampled id is not run).

        seed: the sampler's 64-bit state to start from (golden.sampler.seed_state of a user seed), or None to
        continue the chip's PRNG and ring of recent ids from the previous sampling call. `owner` names the
        caller whose sampler state the chip holds afterwards (`sampler_owner`), so a caller can tell whether
        another sampling call ran in between."""
        if position != cache.length:
            raise RomaError(f"generate at position {position}, but the KV cache holds {cache.length} positions")
        if n < 1 or position + n > cache.capacity:
            raise RomaError(f"{position + n} positions do not fit the KV cache of {cache.capacity}")
        self._ensure()
        self._cycles = None
        self.sampler_owner = None
        ids = self.core.generate(first_id, position, n, sampling=sampling, seed=seed, eos_id=eos_id,
                                 kv=cache.kv)
        self.sampler_owner = owner
        self._cycles = dict(self.core.stage_cycles)
        cache.length += len(ids)
        return ids

    def forward(self, ids, cache: CoreCache) -> np.ndarray:
        ids = list(np.asarray(ids).reshape(-1))
        if not ids:
            raise ValueError("forward needs at least one token")
        if cache.length + len(ids) > cache.capacity:
            raise RomaError(f"{cache.length + len(ids)} tokens do not fit the KV cache of {cache.capacity} "
                            f"positions")
        self._ensure()
        self._cycles = None
        logits = self.core.prefill(ids, cache.length, kv=cache.kv)
        self._cycles = dict(self.core.stage_cycles)
        cache.length += len(ids)
        return logits

    def last_cycles(self) -> dict[str, int] | None:
        """Estimated FPGA cycles per stage (roma_core.h's Stage enum, from the core's cycles_STAGE registers) of
        the last forward, summed over its calls; None before the first."""
        return None if self._cycles is None else dict(self._cycles)


def board_clock(manifest: dict) -> float | None:
    """The fabric clock (MHz) of the board the build was placed for (artifact/boards.json)."""
    board = manifest.get("board")
    if isinstance(board, dict) and board.get("clock_mhz"):
        return float(board["clock_mhz"])
    try:
        return float(get_board(board if isinstance(board, str) else "u250").clock_mhz)
    except RomaError:
        return None

