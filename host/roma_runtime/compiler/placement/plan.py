"""Placement plan: where each base-model tensor lives on a board, and what that costs.

Every tensor gets one of three placements:

- ``BRAM-ROM``: block RAM initialised by the bitstream, the only true ROM on an FPGA.
- ``URAM-load-once``: UltraScale+ UltraRAM has no init value, so weights placed there are written once from DDR
  after the overlay loads and are read-only afterwards.
- ``DDR-stream``: the tensor stays in DDR (HBM on a U280) and is streamed read-only into the compute array every
  time it is used.

Resource model: the arrays the synthesized top declares
--------------------------------------------------------
The plan's on-chip figures are the HLS's own (issue 19): memory.py lists every array roma_core.cpp declares for
the plan and lays each out exactly as the footprint check (footprint.py) lays out the arrays it reads from the
compiled synthesis path, with the same pragmas of the HLS sources and the same block rules (memory.shape_cost:
BRAM36 tiles in RAMB36/RAMB18 aspect ratios counted in halves, URAM288 blocks of 4K x 72; LUTRAM for banks of
depth <= 128 without a storage pragma). `make -C hw/hls footprint BUILD=...` then compares them array by array.

- GEMV engines: one per configuration (bits, group, scale format, tiles, tier), shared by every layer and linear
  of that configuration (the embedding and an untied output have their own), numbered as roma_model.h numbers
  them. An on-chip engine has a bank, Unit<U>, of [TILES][words] 32-bit plane words (partitioned in WPS = bits *
  group / 32 banks, one word each per cycle) and two 16-bit scale arrays (fp16 scales and minimums, or q8's steps
  and row exponents), each tile's words of all its on-chip tensors stacked; BRAM-ROM engines are `rom_2p
  impl=bram`, URAM-load-once engines (contract C2) writable `impl=uram` arrays reshaped to 64-bit words. Every
  engine (DDR ones too) declares its kernels' local arrays, sized by the largest tensor it serves: the activation
  codes xq[cols], the tiles' accumulators acc[rows], candidates, ... (memory.engine_locals).
- A tensor costs what its engine's arrays grow by when it is added: its words in the bank, plus the engine's local
  arrays when it is the engine's first tensor (or the largest so far). Norms cost nothing of their own: every
  layer's norms are rows of g_norms, on chip in every build, counted with the buffers.

Budget: at most ``budget`` (default 80%) of the board's BRAM36 and URAM, for timing closure; BRAM is counted
in half tiles. Out of that budget, in this order, come:

1. the LoRA unit (contract C1): ``lora_slots`` slots of ``lora_rank`` on the targets, values[S][SLOT_VALUES]
   (fp16, or int8 codes with fp32 row scales) in 64-bit words, URAM where the whole unit fits, else BRAM, plus
   the per-(slot, layer, target) ranks and scales. A rank that does not fit is an error (the message names the
   largest rank that does). No unit without slots or rank.
2. the core's buffers (memory.core_arrays): g_norms, the prefill chunk's activations (PREFILL_CHUNK rows of x, q,
   k, v, attention output), g_logits[VOCAB] (the whole vocabulary's fp32 logits), attention's score[HEADS][MAX_CTX]
   (the build's context, or the on-chip KV positions), the sampler's ring, the one layer()'s locals. These are
   declared whatever the placement, so they are taken even beyond the budget: a board too small for the core
   gets a plan that says OVER BUDGET (Plan.over_budget) rather than a plan of a smaller core than the HLS
   declares. So are the local arrays of the DDR engines, taken when their units stream.
3. the on-chip KV cache, only when ``kv_tokens`` is given (``roma plan/compile --kv-onchip N``): g_kv_chip
   [layers][2][positions * kv_dim] fp16 reshaped to ATT_SIMD values per word, URAM where it fits whole, else BRAM
   (ROMA_KV_ONCHIP_IMPL). Without it the KV cache lives in DDR only and costs no on-chip memory. A build with it
   holds that many positions on chip (roma_core's KV_ONCHIP_CTX); the host's DDR buffers stay the source of truth
   (written through).

Logic: logic.py estimates LUT, FF and DSP per unit (each GEMV engine's datapath by FINN's MVAU formulas, the
activation quantizers, LoRA, attention, norms, RoPE, SwiGLU, sampler, LUTRAM), reported by `roma plan` (text and
--json "logic") as estimates against the board's luts, ff and dsp.

Fill order for the weights, and why
-----------------------------------
Decode reads every linear layer and the lm head in full for every token, but reads only one row of the token
embedding. So a byte of a layer or of the lm head kept on chip saves one byte of DDR traffic per token, while a
byte of the embedding saves almost nothing: the embedding is the first thing to leave the chip (it is placed
last) and the cheapest thing to stream. Among the per-token-fully-read tensors every on-chip byte is worth the
same, so the order is chosen for packing and for a hardware structure that stays simple:

1. transformer layers, in order from layer 0. A layer is one unit: all of its tensors (7 linears, 2 norms) are on
   chip or all stream from DDR, so the datapath has one mode per layer and the plan reads "layers 0-11 on chip,
   12-29 stream from DDR". Layers are small, uniform units that pack a budget far better than one huge lm head.
   Within an on-chip layer each tensor takes BRAM (true ROM, nothing to load) while BRAM lasts, then URAM
   (load-once), so the first layers are in ROM and later ones in URAM. On a board with both, the plan also tries
   the "ffn-pair" fill when the layers take URAM anyway: every layer's w_gate BRAM first and its other linears URAM
   first, so that gate and up sit on two engines that roma_core runs at once; it keeps the fill whose GEMVs cost
   fewer cycles (FILLS).
2. the lm head unit (final norm + output matrix; with tied embeddings it is the embedding matrix, and the token
   lookups then read the same on-chip copy).
3. the token embedding of an untied model (one row per token: cheap to stream).

A unit that does not fit is streamed and the fill continues with the next one (with mixed precision a later,
smaller layer may still fit). Engines make three refinements: a ROM bank leaves free the BRAM that the local
arrays of a layer's URAM engines will need (so that the fill can move on to URAM), a layer that cannot go
BRAM-first is tried URAM-first, and a unit goes on chip whenever that leaves no less room than streaming it
(a streamed unit's DDR engines declare their buffers too). When those buffers push the total over the budget,
the fill runs again with that much less room.

Units can also be put in URAM on purpose (``uram``, the same unit names; ``roma plan/compile --uram``): they skip
BRAM and take URAM (load-once), so a build can run its URAM tier on a board whose BRAM would hold it, for example
to try the weight load; a unit that does not fit the URAM budget is an error.

Units can also be sent to DDR on purpose (``ddr``: layer numbers, ``head``, ``embedding``, or ``all``; ``roma
plan/compile --ddr``): they are placed in DDR before the fill, and their on-chip memory stays free for the other
units (or for a larger LoRA or an on-chip KV cache). It is also the way to get a DDR-streamed build of a model
that would fit, for example to try the DDR tier, or to keep a large lm head out of the bitstream.

Estimate (a roofline, not a measurement)
----------------------------------------
Decode time per token is the sum over the weight units of max(compute time, memory time), plus attention and
LoRA on DSPs, at the board clock:

- compute: LUT-select lanes. A lane selects one of the 16 precomputed subset sums of 4 int8 activations with
  4 code bits of one bit-plane, and accumulates it: ~``LUTS_PER_LANE`` LUTs, 4 weights x 1 bit-plane per cycle,
  i.e. 4/b weights per cycle at b bits. ``COMPUTE_LUT_FRACTION`` of the board's LUTs go to lanes (the rest is
  control, attention, norms, AXI). Scales and zero points are applied once per group on DSPs, in parallel.
- on-chip memory: each BRAM36 tile delivers 72 bits per cycle, each URAM 144 (two 72-bit ports); every block of
  a tier holds a slice of every layer placed in it, so a tensor is read at (the tier's weight blocks x that
  width) / (b + 32/G) weights per cycle.
- DDR: bytes streamed per token / the bandwidth they get: the weights stream through the core's
  ``weight_ports`` weight ports, ``weight_port_bits`` per cycle each (boards.json: 4 x 128 on Zynq UltraScale+,
  4 x 512 on a U250), at most the board's nominal peak (``ddr_bandwidth_gbs``); the KV cache at the nominal peak.
- attention over the KV cache at ``context`` tokens (default 256) and the LoRA products: fp MACs on DSPs at
  one MAC per ``DSPS_PER_MAC`` DSPs, using ``DSP_FRACTION`` of them; KV reads from DDR when the cache is there.

Prefill of a prompt of ``context`` tokens, by the same rates: each layer's weights computed for every token but read
once per block of the board's ``token_lanes`` tokens (weights stationary), the lm head once (only the last token's
logits are needed), attention over keys 0..p for the token at position p, the KV cache read once per block of
queries, and the LoRA products for every token.

Everything is at nominal peak, so the figure is an upper bound labelled "estimate".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable

from ...artifact.boards import Board, ElementwiseLanes, get_board
from ...artifact.build import BRAM_ROM, DDR_STREAM, URAM_LOAD_ONCE
from ...artifact.interface import kernel_constants
from ...artifact.kv_layout import KvLayout, board_sets
from ...artifact.model_header import ffn_pair, head_on_layers_engine
from ...artifact.lora_unit import DTYPES as LORA_DTYPES
from ...errors import RomaError
from ...model.config import ModelConfig
from ...model.weights import ROW_SCALE_BITS, SCALE_BITS, storage_bits_per_weight
from . import logic
from .memory import (L_EMBD, L_OUTPUT, LAYERS, LINEARS as HLS_LINEARS, TIERS, Array, EngineConfig, bank_arrays,
                     code_arrays, core_arrays, ddr_tiles, engine_locals, hw_constants, kv_array, lin_shape, logits_impl,
                     lora_apply_locals, lora_arrays, pragma_defines, source_pragmas, total)

SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUPS = (32, 64, 128)
LINEAR = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

PLACEMENTS = (BRAM_ROM, URAM_LOAD_ONCE, DDR_STREAM)

# The estimate model (see the module docstring).
LUTS_PER_LANE = 64
COMPUTE_LUT_FRACTION = 0.5
DSP_FRACTION = 0.5
DSPS_PER_MAC = 4
BRAM_BITS_PER_CYCLE = 72  # per BRAM36 tile
URAM_BITS_PER_CYCLE = 144  # two 72-bit ports
DEFAULT_CONTEXT = 256
# How on-chip layers fill the tiers: "layers", each tensor BRAM-ROM first (the first layers in ROM, later ones in
# URAM); or "ffn-pair", w_gate BRAM-ROM first and every other linear URAM first, so that a layer's gate and up are on
# two engines, which roma_core runs at once (FFN_PAIR_*). Where the "layers" fill puts layers in URAM too (so both
# engines exist), make_plan also tries "ffn-pair" and keeps the one whose placement costs the fewer GEMV cycles
# (layers that fit the ROM stay there).
FILLS = ("layers", "ffn-pair")
ROM_FIRST = (("rom", BRAM_ROM), ("uram", URAM_LOAD_ONCE))
URAM_FIRST = (("uram", URAM_LOAD_ONCE), ("rom", BRAM_ROM))
FFN_PAIR = {HLS_LINEARS.index("w_gate"): ROM_FIRST, None: URAM_FIRST}


# --- the plan's records -----------------------------------------------------------------------------------


@dataclass
class TensorPlan:
    name: str
    kind: str  # "linear", "norm", "embedding", "lm_head", "embedding+lm_head"
    layer: int | None
    rows: int
    cols: int
    bits: int  # code bits; 32 for fp32 norm vectors
    group: int | None
    code_bytes: int
    scale_bytes: int  # scale + minimum per group (fp16: 4 bytes; q8: 2) and q8's 2 bytes of exponents per row
    placement: str = DDR_STREAM
    bram36: float = 0.0  # blocks its engine's arrays grow by when it is added (see "engines" in the docstring)
    uram: float = 0.0
    scales: str = "fp16"  # how the scales and minimums are stored (compiler/quantization/quantize.py)
    tiles: int = 1  # its engine's tiles (PEs): the tensor's rows dealt to them in turn (set when placed)

    @property
    def lin(self) -> int | None:
        """The roma_core.cpp linear (memory.LINEARS index) whose engine runs this tensor; None for a norm (its
        weights are a row of g_norms, on chip whatever the unit's tier)."""
        if self.kind == "norm":
            return None
        if self.kind == "lm_head":
            return L_OUTPUT
        if self.kind in ("embedding", "embedding+lm_head"):
            return L_EMBD
        return HLS_LINEARS.index(self.name.rsplit(".", 1)[-1])

    def engine(self, tier: str, pe: int, board: Board) -> EngineConfig:
        """The GEMV engine that runs this tensor on `tier`: shared by the layers' linears of its configuration, its
        tiles the plan's `pe` on chip (the embedding and an untied output keep one), a DDR tensor's a multiple of
        the board's weight ports that bounds its accumulators (memory.ddr_tiles: rounds of a tile per port). A
        streamed lm head runs on the layers' DDR engine of its configuration where model_header.head_on_layers_engine
        says so, with its own tiles (EngineConfig.tensor_tiles)."""
        role = self.lin if self.lin >= L_EMBD else LAYERS
        ports = board.weight_ports
        tiles = ddr_tiles(self.rows, ports) if tier == "ddr" else pe if role == LAYERS else 1
        joined = tier == "ddr" and self.kind in ("lm_head", "embedding+lm_head") and head_on_layers_engine(
            self.bits, self.group, tiles, board.weight_port_bits, ports)
        if joined:
            role, tiles = LAYERS, joined
        return EngineConfig(role, self.bits, self.group, self.scales, tier, tiles)

    @property
    def bytes(self) -> int:
        return self.code_bytes + self.scale_bytes

    @property
    def params(self) -> int:
        return self.rows * self.cols

    @property
    def bits_per_weight(self) -> float:
        return storage_bits_per_weight(self.bits, self.group, self.cols, self.scales) if self.group else self.bits

    @property
    def read_per_token(self) -> str:
        return "row" if self.kind == "embedding" else "full"

    def to_dict(self) -> dict:
        return {
            "name": self.name, "kind": self.kind, "layer": self.layer, "shape": [self.rows, self.cols],
            "bits": self.bits, "group": self.group, "scales": self.scales, "code_bytes": self.code_bytes,
            "scale_bytes": self.scale_bytes,
            "bytes": self.bytes, "placement": self.placement, "bram36": self.bram36, "uram": self.uram,
            "tiles": self.tiles, "read_per_token": self.read_per_token,
        }


@dataclass
class Reservation:
    what: str
    bytes: int
    bram36: float = 0.0
    uram: float = 0.0
    placement: str = "on-chip"
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"what": self.what, "bytes": self.bytes, "bram36": self.bram36, "uram": self.uram,
                "placement": self.placement, **self.detail}


@dataclass
class Plan:
    model: ModelConfig
    board: Board
    bits: int
    group: int
    per_tensor_bits: dict
    budget: float
    lora: Reservation
    buffers: Reservation
    kv_cache: Reservation
    tensors: list[TensorPlan]
    bram36_budget: float
    uram_budget: float
    estimate: dict
    ddr_forced: list = field(default_factory=list)  # units sent to DDR on purpose (parse_ddr_units form)
    uram_forced: list = field(default_factory=list)  # units put in URAM on purpose (the same form)
    scales: str = "fp16"  # the linears' scale format
    per_tensor_groups: dict = field(default_factory=dict)  # a build's groups where they differ from `group`
    context: int = 0  # the build's CONTEXT (attention's score buffer)
    lora_slots: int = 0  # the LoRA unit's slots (contract C1; 0: no unit)
    arrays: list = field(default_factory=list)  # every array the top declares (memory.py), laid out
    engines: list = field(default_factory=list)  # the GEMV engines (_Engines.configs)
    logic: dict = field(default_factory=dict)  # LUT/FF/DSP estimates (logic.py)
    pe: int = 1  # tiles (processing elements) of the layers' on-chip GEMV engines (pe_candidates)
    fill: str = FILLS[0]  # how the on-chip layers filled the tiers (FILLS)

    # -- derived facts --
    @property
    def total_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors)

    @property
    def on_chip_bytes(self) -> int:
        return sum(t.bytes for t in self.tensors if t.placement != DDR_STREAM)

    @property
    def ddr_bytes(self) -> int:
        return self.total_bytes - self.on_chip_bytes

    @property
    def bram36_used(self) -> float:
        return self.lora.bram36 + self.buffers.bram36 + self.kv_cache.bram36 + sum(t.bram36 for t in self.tensors)

    @property
    def uram_used(self) -> float:
        return self.lora.uram + self.buffers.uram + self.kv_cache.uram + sum(t.uram for t in self.tensors)

    @property
    def fits_on_chip(self) -> bool:
        return all(t.placement != DDR_STREAM for t in self.tensors)

    @property
    def over_budget(self) -> list[str]:
        """What exceeds the budget: the core's own arrays (buffers, the DDR engines' buffers) are declared
        whatever the room, so a board too small for them gets a plan that says so, not a smaller core."""
        out = []
        if self.bram36_used > self.bram36_budget + 1e-9:
            out.append(f"BRAM36 {self.bram36_used:,.1f} of {self.bram36_budget:,.1f}")
        if self.uram_used > self.uram_budget + 1e-9:
            out.append(f"URAM {self.uram_used:,.0f} of {self.uram_budget:,.0f}")
        return out

    @property
    def logic_over(self) -> list[str]:
        """The logic estimates (placement/logic.py) above the device's whole LUT, FF or DSP count: memory may fit
        while the one-engine-per-configuration datapath does not."""
        return [f"{k.upper()} {v['used']:,} of {v['available']:,}" for k, v in self.logic.get("total", {}).items()
                if v["used"] > v["available"]]

    def layer_placement(self, i: int) -> str:
        tiers = {t.placement for t in self.tensors if t.layer == i and t.kind != "norm"}
        return _tier_label(tiers)

    def layers_on_chip(self) -> list[int]:
        return [i for i in range(self.model.n_layers) if self.layer_placement(i) != DDR_STREAM]

    def layers_streamed(self) -> list[int]:
        return [i for i in range(self.model.n_layers) if self.layer_placement(i) == DDR_STREAM]

    def unit_placement(self, kinds: Iterable[str]) -> str | None:
        tiers = {t.placement for t in self.tensors if t.layer is None and t.kind in kinds and t.kind != "norm"}
        return _tier_label(tiers) if tiers else None

    @property
    def summary(self) -> str:
        over, logic_over = self.over_budget, self.logic_over
        return self._placement_summary() + (f"; OVER BUDGET: the top declares {' and '.join(over)} (its buffers "
                                            f"{self.buffers.bram36:,.1f} BRAM36 whatever the placement)"
                                            if over else "") + (
            f"; logic estimate above the device: {', '.join(logic_over)}" if logic_over else "")

    def _placement_summary(self) -> str:
        n = self.model.n_layers
        if self.fits_on_chip:
            where = []
            if any(t.placement == BRAM_ROM for t in self.tensors):
                where.append("BRAM-ROM")
            if any(t.placement == URAM_LOAD_ONCE for t in self.tensors):
                where.append("URAM-load-once")
            return (f"fits on chip: yes - all {n} layers, the lm head and the embedding are on chip "
                    f"({' + '.join(where)}); nothing streams from DDR")
        on, off = self.layers_on_chip(), self.layers_streamed()
        parts = []
        if on:
            parts.append(f"{_plural('layer', on)} {ranges(on)} on chip")
        else:
            parts.append("no layer fits on chip")
        if off:
            parts.append(f"{_plural('layer', off)} {ranges(off)} stream{'s' if len(off) == 1 else ''} from DDR")
        streamed_units = [label for kinds, label in self._units() if self.unit_placement(kinds) == DDR_STREAM]
        if streamed_units:
            parts.append(f"{' and '.join(streamed_units)} from DDR")
        return f"fits on chip: no - {'; '.join(parts)}"

    def _units(self):
        if self.model.tied_embeddings:
            return [(("embedding+lm_head", "norm"), "lm head (tied embedding)")]
        return [(("lm_head", "norm"), "lm head"), (("embedding",), "embedding")]

    def to_dict(self) -> dict:
        layers = []
        for i in range(self.model.n_layers):
            ts = [t for t in self.tensors if t.layer == i]
            layers.append({"layer": i, "placement": self.layer_placement(i), "bytes": sum(t.bytes for t in ts),
                           "bram36": sum(t.bram36 for t in ts), "uram": sum(t.uram for t in ts)})
        return {
            "model": {"name": self.model.name, "n_layers": self.model.n_layers, "dim": self.model.dim,
                      "ffn_dim": self.model.ffn_dim, "n_heads": self.model.n_heads,
                      "n_kv_heads": self.model.n_kv_heads, "vocab_size": self.model.vocab_size,
                      "tied_embeddings": self.model.tied_embeddings},
            "board": self.board.to_dict(),
            "quantization": {"bits": self.bits, "group": self.group, "scales": self.scales,
                             "per_tensor_bits": dict(self.per_tensor_bits),
                             "per_tensor_groups": dict(self.per_tensor_groups)},
            "budget": self.budget,
            "resources": {
                "bram36": {"available": self.board.bram36, "budget": self.bram36_budget, "used": self.bram36_used,
                           "lora": self.lora.bram36, "buffers": self.buffers.bram36, "kv_cache": self.kv_cache.bram36,
                           "weights": sum(t.bram36 for t in self.tensors)},
                "uram": {"available": self.board.uram, "budget": self.uram_budget, "used": self.uram_used,
                         "lora": self.lora.uram, "buffers": self.buffers.uram, "kv_cache": self.kv_cache.uram,
                         "weights": sum(t.uram for t in self.tensors)},
                **{k: {"available": v["available"], "used": v["used"], "label": self.logic["label"]}
                   for k, v in self.logic.get("total", {}).items()},
            },
            "logic": self.logic,
            "memory": {"label": "the arrays roma_core declares for this plan, laid out as the footprint check "
                                "lays out the compiled object's (placement/memory.py)",
                       "bram36": sum(a.bram36 for a in self.arrays), "uram": sum(a.uram for a in self.arrays),
                       "arrays": [asdict(a) for a in self.arrays]},
            "engines": self.engines,
            "pe": self.pe,
            "fill": self.fill,
            "context": self.context,
            "lora_slots": self.lora_slots,
            "over_budget": self.over_budget,
            "logic_over": self.logic_over,
            "lora": self.lora.to_dict(),
            "buffers": self.buffers.to_dict(),
            "kv_cache": self.kv_cache.to_dict(),
            "totals": {"weight_bytes": self.total_bytes, "on_chip_bytes": self.on_chip_bytes,
                       "ddr_bytes": self.ddr_bytes,
                       "params": sum(t.params for t in self.tensors if t.kind != "norm")},
            "layers": layers,
            "layers_on_chip": self.layers_on_chip(),
            "layers_streamed": self.layers_streamed(),
            "fits_on_chip": self.fits_on_chip,
            "ddr_forced": list(self.ddr_forced),
            "uram_forced": list(self.uram_forced),
            "summary": self.summary,
            "estimate": self.estimate,
            "tensors": [t.to_dict() for t in self.tensors],
        }

    def render(self, per_tensor: bool = False) -> str:
        return render_table(self, per_tensor=per_tensor)


def _tier_label(tiers: set) -> str:
    if tiers == {DDR_STREAM}:
        return DDR_STREAM
    if tiers == {BRAM_ROM}:
        return BRAM_ROM
    if tiers == {URAM_LOAD_ONCE}:
        return URAM_LOAD_ONCE
    if DDR_STREAM in tiers:  # never produced by make_plan: units are atomic
        return "split"
    return "BRAM-ROM+URAM"


def _plural(word: str, xs: list) -> str:
    return word if len(xs) == 1 else word + "s"


def ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    out, start, prev = [], None, None
    for x in xs:
        if start is None:
            start = prev = x
        elif x == prev + 1:
            prev = x
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = x
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ", ".join(out)


# --- inputs -----------------------------------------------------------------------------------------------


def linear_shapes(config: ModelConfig) -> dict[str, tuple[int, int]]:
    """(rows = outputs, cols = inputs) of each linear of a layer."""
    d, kv, f = config.dim, config.kv_dim, config.ffn_dim
    return {"wq": (d, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, d), "w_gate": (f, d), "w_up": (f, d),
            "w_down": (d, f)}


def _as_config(model) -> ModelConfig:
    if isinstance(model, ModelConfig):
        return model
    if isinstance(getattr(model, "config", None), ModelConfig):
        return model.config
    raise RomaError(f"make_plan needs a ModelConfig or a loaded model, not {type(model).__name__}")


def _check_bits(bits, what: str) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in SUPPORTED_BITS:
        raise RomaError(f"unsupported bits {bits!r} for {what}",
                        hint=f"ROM codes are {', '.join(map(str, SUPPORTED_BITS))} bits")
    return bits


def _setting_for(name: str, short: str, default: int, per_tensor: dict) -> int:
    for key in (name, short):
        if key in per_tensor:
            return per_tensor[key]
    return default


def _canonical_name(key: str) -> str:
    """GGUF-style names as the compiler's build uses them (blk.<i>.<linear>, token_embd) -> the plan's names."""
    if key == "token_embd":
        return "token_embedding"
    if key.startswith("blk."):
        return "layers." + key[4:]
    return key


def _validate_per_tensor(per_tensor: dict | None, config: ModelConfig, what: str, check) -> dict:
    """{name: value} with the names canonical (_canonical_name) and each value passed by check(value, name)."""
    if not per_tensor:
        return {}
    valid = set(LINEAR) | {"token_embedding", "output"}
    valid |= {f"layers.{i}.{n}" for i in range(config.n_layers) for n in LINEAR}
    out = {}
    for key, value in per_tensor.items():
        name = _canonical_name(str(key))
        if name not in valid:
            raise RomaError(f"{what} names an unknown tensor '{key}'",
                            hint="use a linear name for all layers (wq, w_down, ...), layers.<i>.<linear> (or "
                                 "blk.<i>.<linear>) for one layer, token_embedding or output")
        out[name] = check(value, name)
    return out


def _check_scales(scales, name: str) -> str:
    if scales not in SCALE_BITS:
        raise RomaError(f"unknown scale format {scales!r} for {name}", hint=f"use {' or '.join(SCALE_BITS)}")
    return scales


def _check_group(group, name: str, config: ModelConfig) -> int:
    cols = config.dim if name in ("token_embedding", "output") else linear_shapes(config)[name.split(".")[-1]][1]
    if isinstance(group, bool) or group not in SUPPORTED_GROUPS or cols % group:
        raise RomaError(f"group {group!r} for {name} does not divide its {cols}-wide rows or is not supported",
                        hint=f"groups are {', '.join(map(str, SUPPORTED_GROUPS))} weights")
    return group


def _weight_tensor(name, kind, layer, rows, cols, bits, group, scales="fp16") -> TensorPlan:
    scale_bytes = (rows * cols // group * SCALE_BITS[scales] + rows * ROW_SCALE_BITS[scales]) // 8
    return TensorPlan(name=name, kind=kind, layer=layer, rows=rows, cols=cols, bits=bits, group=group,
                      code_bytes=-(-rows * cols * bits // 8), scale_bytes=scale_bytes, scales=scales)


def _norm_tensor(name, layer, dim) -> TensorPlan:
    return TensorPlan(name=name, kind="norm", layer=layer, rows=1, cols=dim, bits=32, group=None,
                      code_bytes=dim * 4, scale_bytes=0)


def build_tensors(config: ModelConfig, bits: int, group: int, per_tensor_bits: dict,
                  scales: str = "fp16", per_tensor_groups: dict | None = None,
                  per_tensor_scales: dict | None = None) -> list[list[TensorPlan]]:
    """The weight tensors, grouped into placement units in fill order: layers 0..n-1, lm head, embedding.
    `scales` is the linears' scale format; the embedding and lm head are fp16 unless per_tensor_scales (a build's
    choices: the compiler requantizes them in the linears' format) says otherwise."""
    per_tensor_groups = per_tensor_groups or {}
    per_tensor_scales = per_tensor_scales or {}
    shapes = linear_shapes(config)
    for lin, (rows, cols) in shapes.items():
        if any(cols % _setting_for(f"layers.{i}.{lin}", lin, group, per_tensor_groups)
               for i in range(config.n_layers)):
            ok = [g for g in SUPPORTED_GROUPS if all(c % g == 0 for _, c in shapes.values())]
            raise RomaError(
                f"row length {cols} of {lin} ({config.name}) is not divisible by the group size {group}",
                hint=f"groups that divide every row of this model: {', '.join(map(str, ok)) or 'none'}")
    units: list[list[TensorPlan]] = []
    for i in range(config.n_layers):
        unit = [_norm_tensor(f"layers.{i}.attn_norm", i, config.dim)]
        for lin in LINEAR:
            rows, cols = shapes[lin]
            name = f"layers.{i}.{lin}"
            b = _setting_for(name, lin, bits, per_tensor_bits)
            g = _setting_for(name, lin, group, per_tensor_groups)
            unit.append(_weight_tensor(name, "linear", i, rows, cols, b, g, scales))
            if lin == "wo":
                unit.append(_norm_tensor(f"layers.{i}.ffn_norm", i, config.dim))
        units.append(unit)
    emb_bits = _setting_for("token_embedding", "token_embedding", bits, per_tensor_bits)
    emb_group = _setting_for("token_embedding", "token_embedding", group, per_tensor_groups)
    emb_scales = per_tensor_scales.get("token_embedding", "fp16")
    head = [_norm_tensor("output_norm", None, config.dim)]
    if config.tied_embeddings:
        head.append(_weight_tensor("token_embedding", "embedding+lm_head", None, config.vocab_size, config.dim,
                                   emb_bits, emb_group, emb_scales))
        units.append(head)
    else:
        out_bits = _setting_for("output", "output", bits, per_tensor_bits)
        head.append(_weight_tensor("output", "lm_head", None, config.vocab_size, config.dim, out_bits,
                                   _setting_for("output", "output", group, per_tensor_groups),
                                   per_tensor_scales.get("output", "fp16")))
        units.append(head)
        units.append([_weight_tensor("token_embedding", "embedding", None, config.vocab_size, config.dim,
                                     emb_bits, emb_group, emb_scales)])
    return units


# --- reservations -----------------------------------------------------------------------------------------


class _NoRoom(Exception):
    pass


class _Pool:
    """Remaining BRAM36 (in half tiles) and URAM blocks of the budget."""

    def __init__(self, bram36: float, uram: float):
        self.bram36, self.uram = bram36, uram

    def fits(self, bram36: float = 0.0, uram: float = 0.0) -> bool:
        return bram36 <= self.bram36 + 1e-9 and uram <= self.uram + 1e-9

    def take(self, bram36: float = 0.0, uram: float = 0.0, force: bool = False) -> None:
        """Take blocks; force: the top declares them whatever the room (the pool may go below zero)."""
        if not force and not self.fits(bram36, uram):
            raise _NoRoom()
        self.bram36 -= bram36
        self.uram -= uram


@dataclass(frozen=True)
class _Core:
    """What sizes the top's arrays besides the weights: the model, the board and budget, the LoRA unit (contract
    C1), the on-chip KV positions and the build's context (roma_model.h CONTEXT)."""
    config: ModelConfig
    board: Board
    budget: float
    lora_slots: int
    lora_rank: int
    lora_targets: tuple
    lora_dtype: str
    kv_tokens: int | None
    context: int
    pe: int = 1  # tiles (processing elements) of the layers' on-chip GEMV engines

    @property
    def pragmas(self):
        # the macro of g_kv_chip's impl is the plan's own choice (kv_array); ROMA_GEMV_PE is the header's pe
        return source_pragmas(pragma_defines(self.pe, self.board.weight_ports, self.board.weight_port_bits,
                                             self.lanes, self.board.token_lanes, act_lanes=self.board.act_lanes))

    @property
    def kv_layout(self) -> KvLayout:
        """The DDR KV cache's ports of a build (roma_model.h KV_PORTS: one with an on-chip cache)."""
        return KvLayout.for_build(self.config.head_dim, self.board.kv_port_bits, self.board.kv_ports,
                                  self.kv_tokens or 0)

    @property
    def lanes(self) -> ElementwiseLanes:
        """The elementwise units' lanes of a build of this model for this board (roma_model.h ROMA_*_LANES)."""
        c = self.config
        return self.board.elementwise_lanes.for_model(c.dim, c.ffn_dim, c.head_dim)

    @property
    def hw(self) -> dict:
        return hw_constants()

    @property
    def lora_unit(self) -> bool:
        return self.lora_slots > 0 and self.lora_rank > 0 and bool(self.lora_targets)



def lora_elements(config: ModelConfig, rank: int, targets: Iterable[str]) -> int:
    shapes = linear_shapes(config)
    return config.n_layers * rank * sum(shapes[t][0] + shapes[t][1] for t in targets)


def _arrays_reservation(what: str, arrays: list[Array], placement: str, detail: dict) -> Reservation:
    bram, uram = total(arrays)
    return Reservation(what, sum(a.bytes for a in arrays), bram, uram, placement,
                       {**detail, "arrays": [a.name for a in arrays]})


def _lora_reservation(core: _Core, pool: _Pool) -> Reservation:
    """The LoRA unit's arrays (contract C1) in URAM where they fit whole, else in BRAM (ROMA_LORA_IMPL)."""
    c = core
    detail = {"slots": c.lora_slots if c.lora_unit else 0, "rank": c.lora_rank, "targets": list(c.lora_targets),
              "dtype": c.lora_dtype, "elements": lora_elements(c.config, c.lora_rank, c.lora_targets)}
    if not c.lora_unit:
        return Reservation(f"LoRA r{c.lora_rank} {c.lora_dtype}", 0, 0.0, 0.0, "none", detail)
    for impl in ("uram", "bram"):
        arrays = lora_arrays(c.config, c.lora_slots, c.lora_rank, c.lora_targets, c.lora_dtype, impl)
        if pool.fits(*total(arrays)):
            pool.take(*total(arrays))
            return _arrays_reservation(f"LoRA {c.lora_slots} x r{c.lora_rank} {c.lora_dtype}", arrays,
                                       impl.upper(), {**detail, "impl": impl})
    raise _NoRoom()


def _buffer_reservation(core: _Core, pool: _Pool) -> Reservation:
    """The arrays the top declares whatever the placement (memory.core_arrays): taken even beyond the budget, so
    that a build whose core alone does not fit says so (Plan.over_budget) instead of planning a smaller core."""
    arrays = core_arrays(core.config, core.context, core.kv_tokens or 0, core.pragmas, core.hw,
                         core.board.kv_port_bits, logits_impl(core.board.uram), core.board.token_lanes,
                         core.kv_layout.ports, board_sets(core.board.kv_ports), chunk=core.board.prefill_chunk)
    pool.take(*total(arrays), force=True)
    return _arrays_reservation(f"activations and buffers (prefill chunk {core.board.prefill_chunk})", arrays, "BRAM",
                               {"context": core.context, "prefill_chunk": core.board.prefill_chunk})


def kv_bytes_per_token(config: ModelConfig) -> int:
    return config.n_layers * 2 * config.kv_dim * 2


def _kv_reservation(core: _Core, pool: _Pool) -> Reservation:
    config, tokens = core.config, core.kv_tokens
    if not tokens:
        return Reservation("KV cache", 0, 0.0, 0.0, "DDR",
                           {"tokens": None, "bytes_per_token": kv_bytes_per_token(config)})
    for impl in ("uram", "bram"):  # where the whole array fits (ROMA_KV_ONCHIP_IMPL)
        arrays = kv_array(config, tokens, impl, core.pragmas, core.board.kv_port_bits)
        if pool.fits(*total(arrays)):
            pool.take(*total(arrays))
            return _arrays_reservation(f"KV cache {tokens} tokens fp16", arrays, impl.upper(),
                                       {"tokens": tokens, "bytes_per_token": kv_bytes_per_token(config)})
    raise _NoRoom()


def _reserve(core: _Core):
    """LoRA unit, buffers and on-chip KV cache, in this order, out of the budget -> ((lora, buffers, kv, pool) or
    None, the stage that did not fit, the budget)."""
    board, budget = core.board, core.budget
    pool = _Pool(math.floor(board.bram36 * budget * 2) / 2, float(math.floor(board.uram * budget)))
    totals = (pool.bram36, pool.uram)
    stage = "LoRA memory"
    try:
        lora = _lora_reservation(core, pool)
        stage = "activation buffers"
        buffers = _buffer_reservation(core, pool)
        stage = "KV cache"
        kv = _kv_reservation(core, pool)
    except _NoRoom:
        return None, stage, totals
    return (lora, buffers, kv, pool), stage, totals


# --- the plan ---------------------------------------------------------------------------------------------


def _check_lora(slots, rank, lora_targets, dtype) -> tuple[str, ...]:
    """The LoRA reservation's targets, after RomaError unless slots and rank are integers >= 0, the targets are
    linears and the dtype is known."""
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 0:
        raise RomaError(f"the LoRA slot count must be an integer >= 0, not {slots!r}", hint="use 0 for no LoRA unit")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
        raise RomaError(f"LoRA rank must be an integer >= 0, not {rank!r}", hint="use 0 for no adapter")
    targets = tuple(dict.fromkeys(lora_targets or ()))
    bad = [t for t in targets if t not in LINEAR]
    if bad:
        raise RomaError(f"unknown LoRA target(s) {', '.join(map(str, bad))}", hint=f"targets are {', '.join(LINEAR)}")
    if dtype not in LORA_DTYPES:
        raise RomaError(f"unsupported LoRA dtype {dtype!r}", hint=f"use {' or '.join(LORA_DTYPES)}")
    return targets


def make_plan(config, board, bits: int = 4, group: int = 32, per_tensor_bits: dict | None = None,
              lora_rank: int = 16, lora_targets=LINEAR, lora_dtype: str = "fp16", lora_slots: int = 1,
              kv_tokens: int | None = None, budget: float = 0.8, context: int | None = None,
              ddr: Iterable | str | None = None, scales: str = "fp16",
              per_tensor_groups: dict | None = None, uram: Iterable | str | None = None,
              build_context: int | None = None, pe: int | None = None, per_tensor_scales: dict | None = None) -> Plan:
    """Place a model's quantized tensors on a board. `config` is a ModelConfig or a LoadedModel (only shapes
    matter); `board` a name from boards.json or a Board; `ddr` units to stream from DDR whatever the room
    (parse_ddr_units: a string like "1,3-5,head" or a list of layer numbers, "head", "embedding", "all");
    `uram` units to put in URAM (load-once) instead of BRAM, in the same form.
    per_tensor_bits and per_tensor_groups (a build's choices) override bits and group by tensor name;
    per_tensor_scales gives the embedding's and lm head's scale format (fp16 unless a build requantized them).
    lora_slots x lora_rank: the LoRA unit the top holds (contract C1; no unit when either is 0). `context` is
    the estimate's context; `build_context` the build's CONTEXT (default: the board's, Board.default_context), which
    sizes attention's score buffer. `pe`: the tiles of the layers' on-chip GEMV engines (default: of pe_candidates, the one
    whose placement costs the fewest GEMV cycles). The prefill chunk is the board's, or the largest of its halvings
    (down to MIN_PREFILL_CHUNK) whose buffers cost no weights their on-chip place (no more GEMV cycles than the
    smallest's). See the module docstring for the model."""
    config = _as_config(config)
    board = get_board(board)
    _check_bits(bits, "the model")
    if isinstance(group, bool) or group not in SUPPORTED_GROUPS:
        raise RomaError(f"unsupported group size {group!r}",
                        hint=f"groups are {', '.join(map(str, SUPPORTED_GROUPS))} weights")
    per_tensor_bits = _validate_per_tensor(per_tensor_bits, config, "per_tensor_bits", _check_bits)
    per_tensor_groups = _validate_per_tensor(per_tensor_groups, config, "per_tensor_groups",
                                             lambda g, name: _check_group(g, name, config))
    per_tensor_scales = _validate_per_tensor(per_tensor_scales, config, "per_tensor_scales", _check_scales)
    targets = _check_lora(lora_slots, lora_rank, lora_targets, lora_dtype)
    check_kv_tokens(kv_tokens, config)
    if kv_tokens and context is not None and context > kv_tokens:
        raise RomaError(f"--context {context} is longer than the on-chip KV cache of {kv_tokens} tokens, which "
                        "bounds every session", hint=f"estimate at --context {kv_tokens} or less, or give a larger "
                                                     "--kv-onchip")
    if not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise RomaError(f"budget must be a fraction in (0, 1], not {budget!r}")

    _check_scales(scales, "the linears")
    units = build_tensors(config, bits, group, per_tensor_bits, scales, per_tensor_groups,  # checks the group
                          per_tensor_scales)
    forced = check_ddr_units(parse_ddr_units(ddr), config)
    in_uram = check_ddr_units(parse_ddr_units(uram), config, "--uram")
    both = forced & in_uram
    if both:
        raise RomaError(f"--ddr and --uram both name {format_ddr_units(sorted(both, key=str))}",
                        hint="a unit has one place: name it in one of them")

    widest = max([bits, *(per_tensor_bits or {}).values()])
    context_len = build_context or board.default_context(config.context_length)

    def core_with(p: int, b: Board) -> _Core:
        return _Core(config, b, budget, lora_slots, lora_rank, targets, lora_dtype, kv_tokens, context_len, p)

    # the PEs (pe_candidates) and the layers' fill (FILLS) whose placement costs the fewest GEMV cycles per token
    if pe is not None:
        check_pe(pe, config)
    candidates = []
    for p in [pe] if pe else pe_candidates(config, board, widest, group):
        for f in FILLS:
            engines = _place(core_with(p, board), units, forced, in_uram, f)[0]
            candidates.append((_gemv_cycles(engines, board), p, FILLS.index(f), f))
            if not board.bram_rom or not any(e.tier == "uram" and e.role == LAYERS for e in engines.members):
                break  # the layers fit the ROM (or there is no ROM): they stay there, on one engine
    cycles, pe, _, fill = min(candidates)
    def chunk_cycles(chunk: int) -> float:
        b = replace(board, prefill_chunk=chunk)
        return _gemv_cycles(_place(core_with(pe, b), units, forced, in_uram, fill)[0], b)

    # the prefill chunk: the largest of the board's and its halvings down to MIN_PREFILL_CHUNK whose buffers leave the
    # weights the room the smallest chunk's do (no more GEMV cycles: a chunk's fill and drain cost less than weights
    # streamed from DDR)
    if board.prefill_chunk > MIN_PREFILL_CHUNK:
        least, chunk = chunk_cycles(MIN_PREFILL_CHUNK), board.prefill_chunk
        while chunk > MIN_PREFILL_CHUNK and (cycles if chunk == board.prefill_chunk else chunk_cycles(chunk)) > least:
            chunk //= 2
        board = replace(board, prefill_chunk=chunk)
    core = core_with(pe, board)
    engines, (lora, buffers, kv), (bram_budget, uram_budget) = _place(core, units, forced, in_uram, fill)
    for unit in units:
        if _unit_key(unit) in in_uram and any(t.lin is not None and t.placement != URAM_LOAD_ONCE for t in unit):
            raise RomaError(f"--uram: {format_ddr_units([_unit_key(unit)])} does not fit the {board.name}'s URAM "
                            f"budget of {uram_budget:g} blocks (after the units before it)",
                            hint="name fewer units in --uram, or a board with more URAM")
    streams = engines.arrays(("ddr",))  # the DDR engines' own buffers (taken as their units were placed)
    b, u = total(streams)
    buffers.bram36, buffers.uram, buffers.bytes = (buffers.bram36 + b, buffers.uram + u,
                                                   buffers.bytes + sum(a.bytes for a in streams))
    buffers.detail["arrays"] += [a.name for a in streams]

    plan = Plan(model=config, board=board, bits=bits, group=group, per_tensor_bits=per_tensor_bits, budget=budget,
                lora=lora, buffers=buffers, kv_cache=kv, tensors=[t for u in units for t in u],
                bram36_budget=bram_budget, uram_budget=uram_budget, estimate={}, ddr_forced=sorted(
                    forced, key=lambda u: (isinstance(u, str), u)), scales=scales,
                uram_forced=sorted(in_uram, key=lambda u: (isinstance(u, str), u)),
                per_tensor_groups=per_tensor_groups, context=core.context, lora_slots=lora.detail["slots"], pe=pe,
                fill=fill)
    plan.arrays = _plan_arrays(core, lora.detail.get("impl"), kv.placement.lower(), engines)
    plan.engines = engines.configs()
    plan.logic = logic.estimate(config, board, plan.engines, lora=lora.detail, kv_tokens=kv_tokens or 0,
                                context=core.context, arrays=plan.arrays)
    if board.token_lanes > 1 and (plan.over_budget or plan.logic_over):
        # the token lanes' datapaths or buffers do not fit the board (a build of many engines, or one whose layers
        # fill the memory to the last block): one lane, as on a Zynq
        return make_plan(config, replace(board, token_lanes=1), bits, group, per_tensor_bits, lora_rank,
                         lora_targets, lora_dtype, lora_slots, kv_tokens, budget, context, ddr, scales,
                         per_tensor_groups, uram, build_context, pe, per_tensor_scales)
    plan.estimate = estimate(plan, context=context)
    return plan


MIN_PREFILL_CHUNK = 16  # the Zynq boards' prefill_chunk: the smallest a plan takes


def _place(core: _Core, units: list, forced: set, in_uram: set, fill: str = "layers"):
    """Place the units for `core` (its reservations first) by `fill` (FILLS): (engines, (lora, buffers, kv),
    budgets). The tensors' placements are set on `units`."""
    reserved, stage, budgets = _reserve(core)
    if reserved is None:
        _raise_no_room(core, stage)
    lora, buffers, kv, pool = reserved
    # The DDR engines' buffers are declared whatever the room: when they push the total over the budget, the
    # fill runs again with that much less room for the banks (a few rounds settle it).
    room, held = (pool.bram36, pool.uram), (0.0, 0.0)
    for _ in range(4):
        pool, engines = _Pool(room[0] - held[0], room[1] - held[1]), _Engines(core)
        for unit in units:
            if _unit_key(unit) in forced:
                _stream_unit(unit, pool, engines)
            elif _unit_key(unit) in in_uram:
                _place_unit(unit, pool, engines, orders=((("uram", URAM_LOAD_ONCE),),))
            else:
                _place_unit(unit, pool, engines, fill=fill)
        short = (max(0.0, -pool.bram36), max(0.0, -pool.uram))
        if short == (0.0, 0.0) or not any(t.placement != DDR_STREAM and t.lin is not None for u in units
                                          for t in u):
            break
        held = (held[0] + math.ceil(short[0] * 2) / 2, held[1] + math.ceil(short[1]))
    return engines, (lora, buffers, kv), budgets


def _gemv_cycles(engines: "_Engines", board: Board) -> float:
    """The GEMV steps' cycles of one token, for choosing the PEs and the fill: an on-chip tensor's (group, row) steps
    over its engine's tiles (and over two token lanes where decode's row split applies), a DDR tensor's chunks at the chunk loop's II (logic.ddr_stream, the cycle model's), a
    tile per weight port at once; a layer's gate and up at once on the FFN pair's engines (model_header.ffn_pair)."""
    each = {}  # (lin, layer) -> (engine, cycles)
    for e, members in engines.members.items():
        tile_rows = engines.tile_rows(e, [lin for lin, _, _ in members])
        for lin, layer, chip in members:
            rows, cols = lin_shape(engines.core.config, lin)
            steps, tiles = rows * cols / e.group, e.tensor_tiles(rows, board.weight_ports)
            if chip:  # a decode token splits its rows over two token lanes where the lanes are there (row_split)
                lanes = board.token_lanes if lin < L_EMBD else 1
                split = row_split(1, lanes, rows // tiles, min(tile_rows))
                each[lin, layer] = e, steps / tiles / (2 if split else 1)
            else:  # rounds of a tile per weight port
                rounds = -(-tiles // board.weight_ports)
                s = logic.ddr_stream(e.bits, e.group, e.scales, tile_rows, board.weight_port_bits)
                each[lin, layer] = e, steps / tiles * rounds / s.block_steps * s.block_chunks * s.ii
    # a layer's gate and up on the engines of the build's FFN pair run at once: the longer of the two
    gate, up = HLS_LINEARS.index("w_gate"), HLS_LINEARS.index("w_up")
    layers = sorted({layer for lin, layer in each if lin == gate and (up, layer) in each})
    pair = engines.ffn_pair()
    cycles = sum(c for _, c in each.values())
    for layer in layers:
        (eg, cg), (eu, cu) = each[gate, layer], each[up, layer]
        if (eg, eu) == pair:
            cycles -= min(cg, cu)
    return cycles


def row_split(n: int, slots: int, rows: int, min_rows: int) -> bool:
    """brom_tile.h BromStepConfig::row_split: whether a block of n tokens on `slots` datapaths per PE (an engine's
    token lanes; both banks' on the two-bank engine) splits a tensor's `rows` per tile over its bank's two ports
    (decode on two lanes, a block of two on four; each slot's accumulators no closer than the engine's loop allows)."""
    fadd = kernel_constants("types.h")["FADD_LATENCY"]
    return slots >= 2 * n and rows % 2 == 0 and rows // 2 >= min(min_rows, fadd)


# The layers' on-chip GEMV engines fold each matrix over PE tiles (finn-hlslib's MVAU: PE rows x GROUP inputs per
# cycle). A tile needs at least MIN_TILE_ROWS rows of every linear (types.h timing::FADD_LATENCY: a row's fp32
# accumulator is revisited every `rows` steps, so fewer rows would raise the engine's II), and the PEs of the
# engines that may hold layers (a BRAM-ROM one and, on a board with URAM, a URAM one), with their token lanes
# (boards.json token_lanes: a datapath per PE and lane), take at most PE_LOGIC_SHARE of the board's LUTs and DSPs by
# the logic estimate (logic.gemv_tile), leaving the rest for attention, the norms, the LoRA unit and the DDR engines.
PE_CHOICES = (32, 16, 8, 4, 2, 1)

MIN_TILE_ROWS = 4
PE_LOGIC_SHARE = 0.4


def _layer_rows(config: ModelConfig) -> set[int]:
    return {lin_shape(config, lin)[0] for lin in range(L_EMBD)}


def check_pe(pe, config: ModelConfig) -> int:
    """`pe` if every layer linear's rows split into that many tiles of at least MIN_TILE_ROWS rows, else RomaError."""
    rows = _layer_rows(config)
    if isinstance(pe, bool) or not isinstance(pe, int) or pe < 1 or any(r % pe or r // pe < MIN_TILE_ROWS
                                                                       for r in rows):
        fits = [p for p in range(1, max(rows) + 1) if all(r % p == 0 and r // p >= MIN_TILE_ROWS for r in rows)]
        raise RomaError(f"--pe {pe!r}: the layers' rows ({', '.join(map(str, sorted(rows)))}) must split into that "
                        f"many tiles of at least {MIN_TILE_ROWS} rows",
                        hint=f"use one of {', '.join(map(str, fits))}")
    return pe


def pe_candidates(config: ModelConfig, board: Board, bits: int, group: int) -> list[int]:
    """The tiles (PE_CHOICES) the layers' on-chip engines can have on `board` (see PE_CHOICES); make_plan places
    the model with each and keeps the one whose GEMVs take the fewest cycles (more PEs make each on-chip GEMV
    faster but split its bank into more BRAM/URAM banks, so fewer layers may fit on chip)."""
    rows = _layer_rows(config)
    engines = (2 if board.uram else 1) * board.token_lanes
    lut, _, dsp, _ = logic.gemv_tile(bits, group)
    return [pe for pe in PE_CHOICES if not any(r % pe or r // pe < MIN_TILE_ROWS for r in rows)
            and engines * pe * lut <= PE_LOGIC_SHARE * board.luts and engines * pe * dsp <= PE_LOGIC_SHARE * board.dsp
            ] or [1]


def _plan_arrays(core: _Core, lora_impl: str | None, kv_impl: str, engines: "_Engines") -> list[Array]:
    """Every array the top declares for the plan, laid out (memory.py): what the footprint check compares."""
    c = core
    lora = lora_arrays(c.config, c.lora_slots, c.lora_rank, c.lora_targets, c.lora_dtype, lora_impl) \
        + lora_apply_locals(c.lora_rank) if lora_impl else []
    kv = kv_array(c.config, c.kv_tokens, kv_impl, c.pragmas, c.board.kv_port_bits) if c.kv_tokens else []
    return lora + core_arrays(c.config, c.context, c.kv_tokens or 0, c.pragmas, c.hw, c.board.kv_port_bits,
                              logits_impl(c.board.uram), c.board.token_lanes, c.kv_layout.ports,
                              board_sets(c.board.kv_ports), chunk=c.board.prefill_chunk) + kv + engines.arrays() \
        + engines.code_arrays()


def check_kv_tokens(kv_tokens, config: ModelConfig) -> None:
    """RomaError unless kv_tokens (positions of an on-chip KV cache, --kv-onchip) is None or 0..context."""
    if kv_tokens is None:
        return
    if isinstance(kv_tokens, bool) or not isinstance(kv_tokens, int) or kv_tokens < 0:
        raise RomaError(f"--kv-onchip takes a number of tokens >= 0, not {kv_tokens!r}")
    if kv_tokens > config.context_length:
        raise RomaError(f"--kv-onchip {kv_tokens} exceeds the model's context length {config.context_length}",
                        hint=f"an on-chip KV cache holds at most the context: use --kv-onchip {config.context_length} "
                             "or less")


def check_kv_onchip(config, board, kv_tokens: int | None, *, lora_rank: int = 0, lora_targets=LINEAR,
                    lora_dtype: str = "fp16", budget: float = 0.8, lora_slots: int = 1,
                    build_context: int | None = None) -> None:
    """RomaError unless an on-chip KV cache of kv_tokens positions fits the model's context and the board's budget
    after the LoRA memory and the activation buffers: the reservations make_plan takes before any weight, so
    `roma compile` can refuse it before it writes anything."""
    config = _as_config(config)
    check_kv_tokens(kv_tokens, config)
    if not kv_tokens:
        return
    board = get_board(board)
    targets = _check_lora(lora_slots, lora_rank, lora_targets, lora_dtype)
    core = _Core(config, board, budget, lora_slots, lora_rank, targets, lora_dtype, kv_tokens,
                 build_context or board.default_context(config.context_length))
    reserved, stage, _ = _reserve(core)
    if reserved is None:
        _raise_no_room(core, stage)


DDR_UNIT_WORDS = ("head", "embedding", "all")


def parse_ddr_units(spec) -> list:
    """Units to stream from DDR: "1,3-5,head" -> [1, 3, 4, 5, "head"]. Layer numbers or ranges, "head" (the lm
    head; with a tied embedding also the embedding), "embedding" (an untied model's token embedding) and "all".
    A list or tuple of such items is accepted too; None or "" is no unit."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        if isinstance(item, bool):
            raise RomaError(f"--ddr takes layer numbers, head, embedding or all, not {item!r}")
        if isinstance(item, int):
            out.append(item)
            continue
        text = str(item).strip().lower()
        if not text:
            continue
        lo, sep, hi = text.partition("-")
        if text in DDR_UNIT_WORDS:
            out.append(text)
        elif lo.isdigit() and (not sep or hi.isdigit()):
            first, last = int(lo), int(hi) if sep else int(lo)
            if last < first:
                raise RomaError(f"--ddr: the range {text} runs backwards", hint=f"write it as {last}-{first}")
            out.extend(range(first, last + 1))
        else:
            raise RomaError(f"--ddr does not know the unit '{item}'",
                            hint="give layer numbers or ranges, head, embedding or all, e.g. --ddr 1,3-5,head")
    return list(dict.fromkeys(out))


def format_ddr_units(units: list) -> str:
    layers = [u for u in units if isinstance(u, int)]
    words = [u for u in units if isinstance(u, str)]
    return ", ".join(([f"{_plural('layer', layers)} {ranges(layers)}"] if layers else []) + words)


def check_ddr_units(units: list, config: ModelConfig, option: str = "--ddr") -> set:
    """The units of parse_ddr_units as _unit_key values; RomaError for a unit this model does not have."""
    n = config.n_layers
    if "all" in units:
        units = list(range(n)) + ["head"] + ([] if config.tied_embeddings else ["embedding"])
    bad = [u for u in units if isinstance(u, int) and not 0 <= u < n]
    if bad:
        raise RomaError(f"{option} names layer {bad[0]}, but {config.name} has layers 0-{n - 1}")
    if "embedding" in units and config.tied_embeddings:
        raise RomaError(f"{config.name} ties its token embedding to the lm head, so the embedding is not a unit "
                        f"of its own", hint="use --ddr head to stream both")
    return set(units)


def _unit_key(unit: list[TensorPlan]):
    """A placement unit's name in parse_ddr_units' terms: its layer, "head" or "embedding"."""
    t = unit[-1]
    if t.layer is not None:
        return t.layer
    return "embedding" if t.kind == "embedding" else "head"


def _runs_layers(members: tuple) -> bool:
    """Whether an engine of these tensors ((lin, layer, on chip), ...) runs a layer's linear (else only the embedding
    or the head)."""
    return any(lin < L_EMBD for lin, _, _ in members)


class _Engines:
    """The GEMV engines the top instantiates for the plan so far: one per configuration (bits, group, scale format,
    tiles, tier), shared by every layer and linear of that configuration (the embedding and an untied output have
    their own, but for a streamed head on the layers' DDR engine: TensorPlan.engine), each with the tensors it serves. An engine costs its bank arrays (each tile's words of its on-chip
    tensors, stacked) and its kernels' local arrays, sized by the largest tensor it serves (memory.bank_arrays,
    memory.engine_locals); a tensor costs what its engine grows by when it is added. Engines are numbered as
    roma_model.h numbers them: by their first tensor, linear by linear and layer by layer, then the embedding and
    the output."""

    def __init__(self, core: _Core):
        self.core = core
        self.members: dict[EngineConfig, tuple] = {}  # engine -> its tensors ((lin, layer, on chip), ...)
        self._cost: dict[tuple, tuple[float, float]] = {}

    def snapshot(self) -> dict:
        return dict(self.members)

    def restore(self, snap: dict) -> None:
        self.members = snap

    def _runs_gemv(self, e: EngineConfig) -> bool:
        """An untied embedding is only looked up (embedding_row): a bank, no GEMV engine."""
        return not (e.role == L_EMBD and not self.core.config.tied_embeddings)

    def _arrays(self, e: EngineConfig, members: tuple, index: int = 0, kernels: tuple | None = None) -> list[Array]:
        """Its bank and its kernels' locals (sized by the tensors of `kernels`, default its own; () for none: the
        ROM engine of the two-bank one, whose kernels are the URAM engine's)."""
        c = self.core
        out = bank_arrays(c.config, e, index, [lin for lin, _, chip in members if chip], c.pragmas)
        banks = 1 if kernels is None else 2  # the two-bank engine's kernels serve both banks
        kernels = members if kernels is None else kernels
        if self._runs_gemv(e) and kernels:
            lins = [lin for lin, _, _ in kernels]
            # a DDR stream whose lanes outrun y's write port keeps two sets of accumulators (brom_ddr.h: y after);
            # its accumulators are banked by its lanes, its row exponents by EX_BANKS
            s = logic.ddr_stream(e.bits, e.group, e.scales, self.tile_rows(e, lins),
                                 c.board.weight_port_bits) if e.tier == "ddr" else None
            out += engine_locals(c.config, e, lins, c.pragmas, c.board.weight_ports, 2 if s and s.y_after else 1,
                                 self._tokens(kernels), ddr_banks=(s.lanes, s.ex_banks) if s else (1, 1),
                                 banks=banks)
        return out

    def tile_rows(self, e: EngineConfig, lins) -> list[int]:
        """The rows per tile of the tensors of linears `lins` on engine e."""
        ports = self.core.board.weight_ports
        return [rows // e.tensor_tiles(rows, ports) for rows in (lin_shape(self.core.config, lin)[0] for lin in lins)]

    def _tokens(self, members: tuple) -> int:
        """The token lanes (roma_core.cpp Unit::TOKENS) of the engine of `members`: the board's where it runs a
        layer's linear, one where it runs only the head, for the last token only."""
        return self.core.board.token_lanes if _runs_layers(members) else 1

    def _total(self, e: EngineConfig, members: tuple) -> tuple[float, float]:
        on_chip = sorted(lin for lin, _, chip in members if chip)  # what the cost depends on
        key = (e, tuple(on_chip), tuple(sorted({lin for lin, _, _ in members})))
        if key not in self._cost:
            self._cost[key] = total(self._arrays(e, members))
        return self._cost[key]

    @staticmethod
    def _member(t: TensorPlan, tier: str) -> tuple:
        return t.lin, t.layer or 0, tier != "ddr"

    def delta(self, t: TensorPlan, tier: str) -> tuple[float, float]:
        e = t.engine(tier, self.core.pe, self.core.board)
        before = self._total(e, self.members[e]) if e in self.members else (0.0, 0.0)
        after = self._total(e, self.members.get(e, ()) + (self._member(t, tier),))
        return after[0] - before[0], after[1] - before[1]

    def uram_hold(self, tensors: list[TensorPlan]) -> float:
        """BRAM the URAM engines of `tensors` that do not exist yet would take (their local arrays): what a ROM
        bank must leave free so that a unit like this one can still go to URAM when BRAM runs out."""
        new: dict[EngineConfig, tuple] = {}
        for t in (t for t in tensors if t.lin is not None):
            e = t.engine("uram", self.core.pe, self.core.board)
            if e not in self.members:
                new[e] = new.get(e, ()) + (self._member(t, "uram"),)
        return sum(self._total(e, m)[0] for e, m in new.items())

    def add(self, t: TensorPlan, tier: str) -> None:
        e = t.engine(tier, self.core.pe, self.core.board)
        self.members[e] = self.members.get(e, ()) + (self._member(t, tier),)
        t.tiles = e.tensor_tiles(t.rows, self.core.board.weight_ports)

    def _numbered(self) -> list[tuple[int, EngineConfig, tuple]]:
        """(roma_model.h's engine index, engine, tensors), in index order."""
        first = {e: min((lin, layer) for lin, layer, _ in m) for e, m in self.members.items()}
        return [(i, e, self.members[e]) for i, e in enumerate(sorted(self.members, key=first.get))]

    def arrays(self, tiers=TIERS) -> list[Array]:
        """Every engine's arrays; the two-bank engine's kernels once, sized by both banks' tensors (its URAM
        engine's gemv_unit: brom_gemv_banks_rt's accumulators a slot per bank and token lane)."""
        two = self.two_banks()
        kernels = {two[0]: (), two[1]: self.members[two[0]] + self.members[two[1]]} if two else {}
        return [a for i, e, m in self._numbered() if e.tier in tiers for a in self._arrays(e, m, i, kernels.get(e))]

    def code_arrays(self) -> list[Array]:
        """The GEMV inputs' codes and the quantizers' locals (memory.code_arrays) for the engines' groups."""
        c = self.core
        gemv = [e for e in self.members if self._runs_gemv(e)]
        return code_arrays(c.config, c.pragmas, c.board.token_lanes, {e.group for e in gemv},
                           {e.group for e in gemv if _runs_layers(self.members[e])},
                           self.ffn_pair() is not None and self.two_banks() is None, c.board.act_lanes)

    def ffn_pair(self) -> tuple | None:
        """(w_gate's engine, w_up's) of the build's FFN pair (model_header.ffn_pair over the layers' gate and up
        engines: FFN_PAIR_GATE, FFN_PAIR_UP), or None."""
        gate, up = HLS_LINEARS.index("w_gate"), HLS_LINEARS.index("w_up")
        where = {(lin, layer): e for e, m in self.members.items() for lin, layer, _ in m}
        layers = sorted({layer for lin, layer in where if lin == gate and (up, layer) in where})
        return ffn_pair([(where[gate, layer], where[up, layer]) for layer in layers], lambda e: e.tier == "ddr")

    def two_banks(self) -> tuple | None:
        """The FFN pair where roma_core.cpp makes it one GEMV engine of two banks (TWO_BANKS): a layers' BRAM-ROM
        engine for gate and a URAM one of the same configuration, on a board with token lanes; else None."""
        pair = self.ffn_pair()
        if pair is None or self.core.board.token_lanes < 2:
            return None
        g, u = pair
        one = (g.role, g.bits, g.group, g.scales, g.tiles) == (u.role, u.bits, u.group, u.scales, u.tiles)
        return pair if one and (g.tier, u.tier) == ("rom", "uram") else None

    def configs(self) -> list[dict]:
        """Each engine: its index, role, configuration, tensors and token lanes (what the logic estimate counts),
        and for the two engines of the two-bank one the other's index."""
        two = self.two_banks()
        numbered = self._numbered()
        index = {e: i for i, e, _ in numbered}
        return [{"index": i, "role": "layers" if _runs_layers(m) else HLS_LINEARS[m[0][0]],
                 "bits": e.bits,
                 "group": e.group, "scales": e.scales, "tier": e.tier, "tiles": e.tiles,
                 "linears": sorted({HLS_LINEARS[lin] for lin, _, _ in m}, key=HLS_LINEARS.index),
                 "tensors": len(m), "on_chip": sum(1 for *_, chip in m if chip), "gemv": self._runs_gemv(e),
                 "token_lanes": self._tokens(m),
                 "tile_rows": self.tile_rows(e, sorted({lin for lin, _, _ in m})),
                 "two_banks_with": index[two[1] if e == two[0] else two[0]] if two and e in two else None}
                for i, e, m in numbered]


def _place_unit(unit: list[TensorPlan], pool: _Pool, engines: _Engines, orders=None, fill: str = "layers") -> None:
    """All tensors of the unit on chip, or all of them streamed from DDR. Each tensor goes to its engine's
    BRAM-ROM bank while BRAM lasts, then to a URAM one (fill "ffn-pair": w_gate so, the others URAM first); when
    that fails (a new URAM engine's local arrays need BRAM the ROM banks took), the unit is tried URAM first. A norm
    has no engine: its row of g_norms is on chip in any case. `orders`: the tiers to try, in order of preference
    (--uram: URAM only)."""
    saved = (pool.bram36, pool.uram, engines.snapshot())
    # Streaming is not free either: its DDR engines' buffers are declared whatever the room. So the unit may go
    # on chip as long as that leaves no less room than streaming would.
    _stream_unit(unit, pool, engines)
    credit = (max(0.0, -pool.bram36), max(0.0, -pool.uram))
    pair = fill == "ffn-pair" and any(t.layer is not None for t in unit)  # a layer (not the head, the embedding)
    orders = orders or ((FFN_PAIR,) if pair else ()) + (ROM_FIRST, URAM_FIRST)
    for order in orders:
        pool.bram36, pool.uram = saved[0] + credit[0], saved[1] + credit[1]
        engines.restore(dict(saved[2]))
        if _try_unit(unit, pool, engines, order):
            pool.bram36, pool.uram = pool.bram36 - credit[0], pool.uram - credit[1]
            return
    pool.bram36, pool.uram = saved[:2]
    engines.restore(dict(saved[2]))
    _stream_unit(unit, pool, engines)


def _try_unit(unit: list[TensorPlan], pool: _Pool, engines: _Engines, order) -> bool:
    for t in unit:
        if t.lin is None:
            t.placement = BRAM_ROM
            continue
        for tier, placement in order.get(t.lin, order[None]) if isinstance(order, dict) else order:
            b, u = engines.delta(t, tier)
            hold = engines.uram_hold(unit) if tier == "rom" and pool.uram > 0 else 0.0
            if pool.fits(b + hold, u):
                pool.take(b, u)
                engines.add(t, tier)
                t.placement, t.bram36, t.uram = placement, b, u
                break
        else:
            return False
    return True


def _stream_unit(unit: list[TensorPlan], pool: _Pool, engines: _Engines) -> None:
    """The unit's tensors streamed from DDR: their DDR engines' local arrays are declared whatever the room. Its
    norms stay on chip (g_norms)."""
    for t in unit:
        t.placement, t.bram36, t.uram = DDR_STREAM if t.lin is not None else BRAM_ROM, 0.0, 0.0
        if t.lin is not None:
            pool.take(*engines.delta(t, "ddr"), force=True)
            engines.add(t, "ddr")


def _raise_no_room(core: _Core, stage: str):
    config, board, budget, rank, dtype = core.config, core.board, core.budget, core.lora_rank, core.lora_dtype
    targets, kv_tokens = core.lora_targets, core.kv_tokens
    pct = f"{budget:.0%}"
    if stage == "LoRA memory":
        fits = lambda r: _reserve(replace(core, lora_rank=r))[0] is not None  # noqa
        best = next((r for r in range(rank - 1, -1, -1) if fits(r)), None)
        need = sum(a.bytes for a in lora_arrays(config, core.lora_slots, rank, targets, dtype, "uram"))
        hint = (f"the largest rank that fits with these targets is {best} (the slot rank: roma compile "
                f"--lora-slot-rank, roma plan --lora-rank)" if best else "no rank > 0 fits with these targets")
        alts = ["fewer --lora-targets (e.g. wq wv)", "--lora-slots 0 for no LoRA unit"]
        if core.lora_slots > 1:
            alts.insert(1, "fewer --lora-slots")
        if dtype == "fp16":
            alts.insert(1, "--lora-dtype int8")
        raise RomaError(
            f"LoRA rank {rank} ({core.lora_slots} slot{'s' if core.lora_slots != 1 else ''}, {dtype}, "
            f"{len(targets)} targets x {config.n_layers} layers) "
            f"needs {need / 2**20:.2f} MiB of writable on-chip memory; {board.name} has "
            f"{budget * (board.bram_bytes + board.uram_bytes) / 2**20:.2f} MiB in its {pct} budget",
            hint=f"{hint}; or use {', '.join(alts)}")
    if stage == "KV cache":
        fits = lambda n: _reserve(replace(core, kv_tokens=n))[0] is not None  # noqa
        lo, hi = 0, kv_tokens
        while lo < hi:  # largest n that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        raise RomaError(
            f"an on-chip KV cache of {kv_tokens} tokens ({kv_tokens * kv_bytes_per_token(config) / 2**20:.2f} MiB) "
            f"does not fit in {board.name}'s {pct} budget after the LoRA memory and the core's buffers",
            hint=f"at most {lo} tokens fit on chip (--kv-onchip {lo}); or omit --kv-onchip to keep the KV cache "
                 "in DDR")
    raise RomaError(f"the activation buffers of {config.name} do not fit in {board.name}'s {pct} budget "
                    f"after the LoRA memory", hint="reserve less LoRA memory (--lora-slots, a lower slot rank, "
                                                   "--lora-targets) or use a larger board")


# --- estimate ---------------------------------------------------------------------------------------------


def compute_lanes(board: Board) -> int:
    return int(COMPUTE_LUT_FRACTION * board.luts // LUTS_PER_LANE)


def estimate(plan: Plan, context: int | None = None) -> dict:
    """Decode tokens/s as a roofline estimate (see the module docstring); an upper bound, not a measurement."""
    c, board = plan.model, plan.board
    f = board.clock_mhz * 1e6
    bw = board.ddr_bandwidth_gbs * 1e9
    # the weight ports (roma_core's gmem_weights, gmem_weights_1, ...), within the memory's peak
    weight_bw = min(bw, board.weight_ports * board.weight_port_bits / 8 * f)
    lanes = compute_lanes(board)
    ctx = context if context is not None else (plan.kv_cache.detail.get("tokens") or DEFAULT_CONTEXT)
    dsp_macs = max(1.0, board.dsp * DSP_FRACTION / DSPS_PER_MAC)

    # Tiles are folded so that every weight block is read in parallel (each block holds a slice of every layer
    # of its tier), so a tier's read width is its block count times the block's port width.
    port_bits = {BRAM_ROM: sum(t.bram36 for t in plan.tensors if t.group) * BRAM_BITS_PER_CYCLE,
                 URAM_LOAD_ONCE: sum(t.uram for t in plan.tensors if t.group) * URAM_BITS_PER_CYCLE}
    t_weights = 0.0
    t_ddr = 0.0  # the DDR streams' time: weights at the weight port's rate, the KV cache at the peak
    ddr_bytes = 0.0
    weights_read = 0
    # a prefill of ctx prompt tokens: its blocks of token lanes (one weight read each), its weights' time
    blocks = -(-ctx // board.token_lanes)
    t_prefill_weights = 0.0
    for t in plan.tensors:
        if t.kind == "norm":  # g_norms: on chip whatever the layer's tier
            continue
        if t.read_per_token == "row":  # embedding lookup: one row
            row_bytes = t.bytes / t.rows
            if t.placement == DDR_STREAM:
                ddr_bytes += row_bytes
                t_ddr += row_bytes / weight_bw
                t_weights += row_bytes / weight_bw
                t_prefill_weights += ctx * row_bytes / weight_bw
            continue
        n = t.params
        weights_read += n
        t_compute = n / (lanes * 4 / t.bits) / f
        if t.placement == DDR_STREAM:
            t_mem = t.bytes / weight_bw
            ddr_bytes += t.bytes
            t_ddr += t_mem
        else:
            t_mem = n * t.bits_per_weight / port_bits[t.placement] / f
        t_weights += max(t_compute, t_mem)
        head = t.kind != "linear"  # the lm head: the prompt's last token's logits only
        t_prefill_weights += max(t_compute, t_mem) if head else max(ctx * t_compute, blocks * t_mem)

    attn_macs = c.n_layers * 2 * c.n_heads * c.head_dim * ctx
    lora_macs = plan.lora.detail.get("elements", 0) // max(1, plan.lora.detail.get("slots", 1))  # one active slot
    t_attn_compute = attn_macs / dsp_macs / f
    kv_read = kv_bytes_per_token(c) * ctx
    t_kv_mem = kv_read / bw if plan.kv_cache.placement == "DDR" else 0.0
    if plan.kv_cache.placement == "DDR":
        ddr_bytes += kv_read
        t_ddr += t_kv_mem
    t_attn = max(t_attn_compute, t_kv_mem)
    t_lora = lora_macs / dsp_macs / f
    total = t_weights + t_attn + t_lora
    # the prompt's attention: the token at position p over keys 0..p; the cache read once per block of queries,
    # up to the block's last key
    prefill_keys = ctx * (ctx + 1) // 2
    block_keys = sum(min((b + 1) * board.token_lanes, ctx) for b in range(blocks))
    t_prefill_attn = max(attn_macs / ctx * prefill_keys / dsp_macs / f,
                         kv_bytes_per_token(c) * block_keys / bw if plan.kv_cache.placement == "DDR" else 0.0)
    prefill = t_prefill_weights + t_prefill_attn + ctx * t_lora
    return {
        "label": "estimate (roofline upper bound at nominal peak bandwidth and clock; not a measurement)",
        "decode_tokens_per_s": 1.0 / total,
        "us_per_token": total * 1e6,
        "breakdown_us": {"weights": t_weights * 1e6, "attention": t_attn * 1e6, "lora": t_lora * 1e6},
        "prefill_tokens_per_s": ctx / prefill,
        "prefill_breakdown_us": {"weights": t_prefill_weights * 1e6, "attention": t_prefill_attn * 1e6,
                                 "lora": ctx * t_lora * 1e6},
        "context_tokens": ctx,
        "ddr_bytes_per_token": int(ddr_bytes),
        "ddr_bound_tokens_per_s": (1.0 / t_ddr) if ddr_bytes else None,
        "weights_read_per_token": weights_read,
        "model": {"clock_mhz": board.clock_mhz, "ddr_bandwidth_gbs": board.ddr_bandwidth_gbs,
                  "weight_port_bits": board.weight_port_bits, "weight_ports": board.weight_ports,
                  "weight_stream_gbs": weight_bw / 1e9,
                  "lut_select_lanes": lanes, "luts_per_lane": LUTS_PER_LANE,
                  "lut_fraction": COMPUTE_LUT_FRACTION, "weights_per_lane_cycle": "4 / bits",
                  "dsp_fp_macs_per_cycle": dsp_macs, "bram_bits_per_cycle": BRAM_BITS_PER_CYCLE,
                  "uram_bits_per_cycle": URAM_BITS_PER_CYCLE},
    }


# --- rendering --------------------------------------------------------------------------------------------


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def _blocks(x: float) -> str:
    return f"{x:g}" if x else "-"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    out = []
    for r in [header] + rows:
        cells = [str(v).rjust(w) if i in right else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def render_table(plan: Plan, per_tensor: bool = False) -> str:
    b, c = plan.board, plan.model
    lines = []
    quant = f"{plan.bits}-bit G{plan.group}" + (", q8 scales" if plan.scales == "q8" else "")
    if plan.per_tensor_bits:
        quant += " (mixed: " + ", ".join(f"{k}={v}" for k, v in plan.per_tensor_bits.items()) + ")"
    lines.append(f"plan: {c.name} ({c.n_layers} layers, dim {c.dim}) on {b.name} ({b.part}, {b.clock_mhz:g} MHz), "
                 f"{quant}")
    lines.append(f"budget {plan.budget:.0%} of on-chip memory; weights {_mib(plan.total_bytes)} "
                 f"({plan.total_bytes:,} bytes incl. the scales and minimums)")
    lines.append("")
    rows = [
        ["available", f"{b.bram36}", f"{b.uram}", ""],
        [f"budget ({plan.budget:.0%})", f"{plan.bram36_budget:g}", f"{plan.uram_budget:g}", ""],
        [plan.lora.what, _blocks(plan.lora.bram36), _blocks(plan.lora.uram), _mib(plan.lora.bytes)],
        [plan.buffers.what, _blocks(plan.buffers.bram36), _blocks(plan.buffers.uram), _mib(plan.buffers.bytes)],
        [plan.kv_cache.what + ("" if plan.kv_cache.detail.get("tokens") else " (in DDR)"),
         _blocks(plan.kv_cache.bram36), _blocks(plan.kv_cache.uram), _mib(plan.kv_cache.bytes)],
        ["weights on chip", _blocks(sum(t.bram36 for t in plan.tensors)), _blocks(sum(t.uram for t in plan.tensors)),
         _mib(plan.on_chip_bytes)],
        ["used", f"{plan.bram36_used:g}", f"{plan.uram_used:g}", ""],
    ]
    lines += _table(["resources", "BRAM36", "URAM", "bytes"], rows, {1, 2, 3})
    lines.append("")
    if per_tensor:
        rows = [[t.name, f"{t.rows}x{t.cols}", f"{t.bits}" if t.kind != "norm" else "fp32", f"{t.bytes:,}",
                 t.placement, _blocks(t.bram36), _blocks(t.uram)] for t in plan.tensors]
        lines += _table(["tensor", "shape", "bits", "bytes", "placement", "BRAM36", "URAM"], rows, {2, 3, 5, 6})
    else:
        # Consecutive layers with the same placement and bits share a row.
        rows, runs = [], []
        for i in range(c.n_layers):
            ts = [t for t in plan.tensors if t.layer == i]
            key = (plan.layer_placement(i), "/".join(map(str, sorted({t.bits for t in ts if t.kind != "norm"}))))
            if runs and runs[-1][0] == key and runs[-1][2] == i - 1:
                runs[-1][2] = i
                runs[-1][3].extend(ts)
            else:
                runs.append([key, i, i, list(ts)])
        for (placement, bits), first, last, ts in runs:
            label = f"layer {first}" if first == last else f"layers {first}-{last}"
            rows.append([label, bits, f"{sum(t.bytes for t in ts):,}", placement,
                         _blocks(sum(t.bram36 for t in ts)), _blocks(sum(t.uram for t in ts))])
        for t in plan.tensors:
            if t.layer is None:
                label = {"embedding+lm_head": "token_embedding (= lm head)", "lm_head": "output (lm head)"}.get(
                    t.kind, t.name)
                rows.append([label, f"{t.bits}" if t.kind != "norm" else "fp32", f"{t.bytes:,}", t.placement,
                             _blocks(t.bram36), _blocks(t.uram)])
        lines += _table(["unit", "bits", "bytes", "placement", "BRAM36", "URAM"], rows, {1, 2, 4, 5})
    lines.append("")
    lines += logic.render(plan.logic)
    lines.append("")
    lines.append(plan.summary)
    if plan.ddr_forced:
        lines.append(f"sent to DDR on purpose (--ddr): {format_ddr_units(plan.ddr_forced)}")
    if plan.uram_forced:
        lines.append(f"put in URAM on purpose (--uram): {format_ddr_units(plan.uram_forced)}")
    if plan.fill == "ffn-pair":
        lines.append("filled ffn-pair: each layer's w_gate in BRAM-ROM and its other linears in URAM where they fit, "
                     "so that gate and up run at once on two engines")
    on, total = plan.on_chip_bytes, plan.total_bytes
    lines.append(f"on chip {_mib(on)} ({on / total:.0%}), streamed from DDR {_mib(total - on)}")
    e = plan.estimate
    ddr = e["ddr_bytes_per_token"]
    bound = f", DDR-bound at most {e['ddr_bound_tokens_per_s']:,.0f} tokens/s" if ddr else ""
    lines.append(f"estimate: ~{e['decode_tokens_per_s']:,.0f} decode tokens/s at context {e['context_tokens']} "
                 f"({e['us_per_token']:,.1f} us/token; DDR traffic {_mib(ddr)}/token incl. KV, weights at "
                 f"{e['model']['weight_stream_gbs']:g} GB/s ({b.weight_ports} x {b.weight_port_bits}-bit ports), KV at "
                 f"{b.ddr_bandwidth_gbs:g} GB/s{bound}; "
                 f"{e['model']['lut_select_lanes']:,} LUT-select lanes at {b.clock_mhz:g} MHz)")
    pre = e["prefill_breakdown_us"]
    lines.append(f"          ~{e['prefill_tokens_per_s']:,.0f} prefill tokens/s for a {e['context_tokens']}-token "
                 f"prompt (weights {pre['weights']:,.0f} us, read once per {b.token_lanes} tokens; attention "
                 f"{pre['attention']:,.0f} us, the cache read once per {b.token_lanes} queries)")
    if e["breakdown_us"]["lora"]:
        lines.append(f"          both with one LoRA slot's products ({e['breakdown_us']['lora']:,.1f} us a decode "
                     f"token, {pre['lora']:,.0f} us the prompt); roma bench leaves them out for a run without an "
                     "adapter")
    lines.append("  " + e["label"])
    return "\n".join(lines)
