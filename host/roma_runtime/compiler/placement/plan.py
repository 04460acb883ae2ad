"""Placement plan: where each base-model tensor lives on a board, and what that costs.

Every tensor gets one of three placements:

- ``BRAM-ROM``: block RAM initialised by the bitstream, the only true ROM on an FPGA.
- ``URAM-load-once``: UltraScale+ UltraRAM has no init value, so weights placed there are written once from DDR
  after the overlay loads and are read-only afterwards.
- ``DDR-stream``: the tensor stays in DDR (HBM on a U280) and is streamed read-only into the compute array every
  time it is used.

Resource model (all assumptions are here and nowhere else)
------------------------------------------------------------
Memories are counted in the units Vivado reports, BRAM36 tiles and URAM288 blocks, from each memory's word
width and depth, never from bytes alone:

- A BRAM36 tile is 36 Kib with the aspect ratios of RAMB36E1/E2: 32Kx1, 16Kx2, 8Kx4, 4Kx9, 2Kx18, 1Kx36,
  512x72 (the 72-bit width in simple dual port mode, which a ROM or a write-once buffer can use). It can be
  split into two RAMB18 halves (16Kx1 .. 512x36), counted as 0.5 tile. Widths 1, 2 and 4 cannot use the
  parity bits, so they hold 32 Kib, not 36.
- A URAM288 block is 4K x 72, with no other aspect ratio.
- A memory of word width W and depth D costs, for the best single aspect ratio (w, d) of the primitive,
  ceil(W/w) columns times floor(D/d) full rows of blocks, plus a tail row for the remaining D mod d words that
  may use a different (shallower) aspect ratio. This is the decomposition the mapper does; it is what makes a
  576-deep array cost a whole 512-deep tile plus a second one, not 1.1 tiles.
- Items may be packed k to a word (k = 1..8, word <= 288 bits), and the packing with the fewest blocks is taken.

Per weight matrix (rows = outputs, cols = inputs, b-bit codes, groups of G along a row), the natural word is one
group: b*G code bits (its bit-planes side by side, as the LUT-select tile reads them), plus its scale and
minimum: a 32-bit word of two fp16, or with q8 scales a 16-bit word of two 8-bit steps and, in a memory of its
own, a 16-bit word of exponents per row. Codes and scales may live in separate memories or fused in one
(b*G + 32 or 16 bits); the cheaper layout is taken, separately for BRAM and URAM. Norm weights are fp32 vectors.

Banks: layers run one after another, so a tile's memory holds its row slice of every on-chip layer stacked in
depth. The planner therefore keeps one bank per (BRAM or URAM, code bits, group, scale format) for all weight
matrices, one for q8's row exponents and one for the fp32 norms, and charges each tensor the blocks its banks
grow by when the tensor is added; the sum over tensors is exactly the bank total. Splitting a bank among
tiles is assumed to follow block boundaries (tile count chosen by the compiler), so it adds no blocks.

Budget: at most ``budget`` (default 80%) of the board's BRAM36 and URAM, for timing closure; BRAM is counted
in half tiles. Out of that budget, in this order, come:

1. the LoRA memory: rank x (in + out) elements per targeted linear per layer, fp16, or int8 with one fp16 scale
   per row of A and of B, packed into one pool of 72-bit words (4 fp16 or 9 int8 per word). It is writable
   memory, so it goes to URAM where the board has it, spilling into BRAM only if URAM runs out. A rank whose
   pool does not fit is an error (the message names the largest rank that does).
2. activations and buffers, in BRAM (they need many narrow ports): fp32 vectors x, xb, q, k, v, attention
   output (dim or kv_dim each), the two FFN hidden vectors (ffn_dim each), the int8 activation codes and their
   fp32 group scales, one attention score row (``SCORE_CHUNK`` fp32), the LoRA intermediate (rank fp32), and a
   fixed ``FIXED_BUFFER_BRAM36`` tiles for DDR burst FIFOs and control. Logits are not buffered: they stream to
   the on-chip sampler or to DDR.
3. the on-chip KV cache, only when ``kv_tokens`` is given (``roma plan/compile --kv-onchip N``): n_layers x 2 x
   kv_dim fp16 per token, 4 to a 72-bit word (the core stores SIMD fp16 per word), URAM first, then BRAM. Without
   it the KV cache lives in DDR only and costs no on-chip memory. A build with it holds that many positions on chip
   (roma_core's KV_ONCHIP_CTX); the host's DDR buffers stay the source of truth (written through).

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
   (load-once), so the first layers are in ROM and later ones in URAM.
2. the lm head unit (final norm + output matrix; with tied embeddings it is the embedding matrix, and the token
   lookups then read the same on-chip copy).
3. the token embedding of an untied model (one row per token: cheap to stream).

A unit that does not fit is streamed and the fill continues with the next one (with mixed precision a later,
smaller layer may still fit).

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
- DDR: bytes streamed per token / the board's nominal peak bandwidth (boards.json, ``ddr_bandwidth_gbs``).
- attention over the KV cache at ``context`` tokens (default 256) and the LoRA products: fp MACs on DSPs at
  one MAC per ``DSPS_PER_MAC`` DSPs, using ``DSP_FRACTION`` of them; KV reads from DDR when the cache is there.

Everything is at nominal peak, so the figure is an upper bound labelled "estimate".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable

from ...artifact.boards import Board, get_board
from ...artifact.build import BRAM_ROM, DDR_STREAM, URAM_LOAD_ONCE
from ...errors import RomaError
from ...model.config import ModelConfig
from ...model.weights import ROW_SCALE_BITS, SCALE_BITS, storage_bits_per_weight

SUPPORTED_BITS = (2, 3, 4, 8)
SUPPORTED_GROUPS = (32, 64, 128)
LINEAR = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
LORA_DTYPES = ("fp16", "int8")

PLACEMENTS = (BRAM_ROM, URAM_LOAD_ONCE, DDR_STREAM)

# (data width, depth, cost in BRAM36 tiles): RAMB36 aspect ratios, then RAMB18 halves.
BRAM_SHAPES = (
    (1, 32768, 1.0), (2, 16384, 1.0), (4, 8192, 1.0), (9, 4096, 1.0), (18, 2048, 1.0), (36, 1024, 1.0),
    (72, 512, 1.0),
    (1, 16384, 0.5), (2, 8192, 0.5), (4, 4096, 0.5), (9, 2048, 0.5), (18, 1024, 0.5), (36, 512, 0.5),
)
URAM_SHAPES = ((72, 4096, 1.0),)
MAX_PACK = 8
MAX_WORD_BITS = 288

# Buffers and the estimate model (see the module docstring).
SCORE_CHUNK = 1024
FIXED_BUFFER_BRAM36 = 4.0
LUTS_PER_LANE = 64
COMPUTE_LUT_FRACTION = 0.5
DSP_FRACTION = 0.5
DSPS_PER_MAC = 4
BRAM_BITS_PER_CYCLE = 72  # per BRAM36 tile
URAM_BITS_PER_CYCLE = 144  # two 72-bit ports
DEFAULT_CONTEXT = 256


# --- block counting ---------------------------------------------------------------------------------------


def _shape_cost(width: int, depth: int, shapes) -> float:
    best = math.inf
    for w, d, cost in shapes:
        cols = -(-width // w)
        full, rem = divmod(depth, d)
        total = cols * full * cost
        if rem:
            total += min(-(-width // w2) * -(-rem // d2) * c2 for w2, d2, c2 in shapes)
        best = min(best, total)
    return best


def memory_blocks(items: int, item_bits: int, kind: str) -> float:
    """Blocks (BRAM36 tiles, in halves, or URAM288) for `items` words of `item_bits`, best packing k per word."""
    if items <= 0:
        return 0.0
    shapes = BRAM_SHAPES if kind == "bram" else URAM_SHAPES
    best = math.inf
    for k in range(1, MAX_PACK + 1):
        if k > 1 and k * item_bits > MAX_WORD_BITS:
            break
        best = min(best, _shape_cost(k * item_bits, -(-items // k), shapes))
    return best


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
    bram36: float = 0.0  # blocks this tensor adds to its bank (see "banks" in the module docstring)
    uram: float = 0.0
    scales: str = "fp16"  # how the scales and minimums are stored (compiler/quantization/quantize.py)

    def memories(self) -> list[tuple[tuple, int]]:
        """(bank, words) of each memory the tensor fills: groups of a matrix (codes with their scale and
        minimum), q8's per-row exponents, or a norm vector's elements."""
        if not self.group:
            return [(("fp32",), self.cols)]
        groups = self.rows * self.cols // self.group
        row_bits = ROW_SCALE_BITS[self.scales]
        return [(("matrix", self.bits, self.group, SCALE_BITS[self.scales]), groups)] + (
            [(("rows", row_bits), self.rows)] if row_bits else [])

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
            "read_per_token": self.read_per_token,
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
    scales: str = "fp16"  # the linears' scale format
    per_tensor_groups: dict = field(default_factory=dict)  # a build's groups where they differ from `group`

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

    def layer_placement(self, i: int) -> str:
        tiers = {t.placement for t in self.tensors if t.layer == i}
        return _tier_label(tiers)

    def layers_on_chip(self) -> list[int]:
        return [i for i in range(self.model.n_layers) if self.layer_placement(i) != DDR_STREAM]

    def layers_streamed(self) -> list[int]:
        return [i for i in range(self.model.n_layers) if self.layer_placement(i) == DDR_STREAM]

    def unit_placement(self, kinds: Iterable[str]) -> str | None:
        tiers = {t.placement for t in self.tensors if t.layer is None and t.kind in kinds}
        return _tier_label(tiers) if tiers else None

    @property
    def summary(self) -> str:
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
            },
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


def _matrix_blocks(groups: int, code_bits: int, scale_bits: int, kind: str) -> float:
    separate = memory_blocks(groups, code_bits, kind) + memory_blocks(groups, scale_bits, kind)
    fused = memory_blocks(groups, code_bits + scale_bits, kind)
    return min(separate, fused)


def _norm_tensor(name, layer, dim) -> TensorPlan:
    return TensorPlan(name=name, kind="norm", layer=layer, rows=1, cols=dim, bits=32, group=None,
                      code_bytes=dim * 4, scale_bytes=0)


def build_tensors(config: ModelConfig, bits: int, group: int, per_tensor_bits: dict,
                  scales: str = "fp16", per_tensor_groups: dict | None = None) -> list[list[TensorPlan]]:
    """The weight tensors, grouped into placement units in fill order: layers 0..n-1, lm head, embedding.
    `scales` is the linears' scale format; the embedding and lm head keep fp16 (as the compiler does)."""
    per_tensor_groups = per_tensor_groups or {}
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
    head = [_norm_tensor("output_norm", None, config.dim)]
    if config.tied_embeddings:
        head.append(_weight_tensor("token_embedding", "embedding+lm_head", None, config.vocab_size, config.dim,
                                   emb_bits, emb_group))
        units.append(head)
    else:
        out_bits = _setting_for("output", "output", bits, per_tensor_bits)
        head.append(_weight_tensor("output", "lm_head", None, config.vocab_size, config.dim, out_bits,
                                   _setting_for("output", "output", group, per_tensor_groups)))
        units.append(head)
        units.append([_weight_tensor("token_embedding", "embedding", None, config.vocab_size, config.dim,
                                     emb_bits, emb_group)])
    return units


# --- reservations -----------------------------------------------------------------------------------------


class _NoRoom(Exception):
    pass


class _Pool:
    """Remaining BRAM36 (in half tiles) and URAM blocks of the budget."""

    def __init__(self, bram36: float, uram: float):
        self.bram36, self.uram = bram36, uram

    def take(self, bram36: float = 0.0, uram: float = 0.0) -> None:
        if bram36 > self.bram36 + 1e-9 or uram > self.uram + 1e-9:
            raise _NoRoom()
        self.bram36 -= bram36
        self.uram -= uram

    def writable(self, words72: int) -> tuple[float, float]:
        """Place `words72` 72-bit words of writable memory: URAM first, the rest in BRAM. Returns (bram, uram)."""
        if words72 <= 0:
            return 0.0, 0.0
        need_u = -(-words72 // 4096)
        if need_u <= self.uram:
            self.take(uram=need_u)
            return 0.0, float(need_u)
        u = int(self.uram)
        rest = words72 - u * 4096
        b = _shape_cost(72, rest, BRAM_SHAPES)
        self.take(bram36=b, uram=u)
        return b, float(u)


def lora_elements(config: ModelConfig, rank: int, targets: Iterable[str]) -> int:
    shapes = linear_shapes(config)
    return config.n_layers * rank * sum(shapes[t][0] + shapes[t][1] for t in targets)


def _lora_reservation(config, slots, rank, targets, dtype, pool: _Pool) -> Reservation:
    shapes = linear_shapes(config)
    elements = slots * lora_elements(config, rank, targets)
    if dtype == "fp16":
        nbytes, words = elements * 2, -(-elements // 4)
    else:  # int8 with an fp16 scale per row of A (rank rows) and per row of B (out rows)
        scales = slots * config.n_layers * sum(rank + shapes[t][0] for t in targets) if rank else 0
        nbytes, words = elements + 2 * scales, -(-elements // 9) + -(-scales // 4)
    bram, uram = pool.writable(words)
    where = "/".join(p for p, n in (("URAM", uram), ("BRAM", bram)) if n) or "none"
    return Reservation(f"LoRA {slots} x r{rank} {dtype}", nbytes, bram, uram, where,
                       {"slots": slots, "rank": rank, "targets": list(targets), "dtype": dtype,
                        "elements": elements})


def _buffer_reservation(config: ModelConfig, rank: int, group: int, pool: _Pool) -> Reservation:
    d, kv, f = config.dim, config.kv_dim, config.ffn_dim
    fp32_vectors = {"x": d, "xb": d, "q": d, "k": kv, "v": kv, "attn_out": d, "ffn_gate": f, "ffn_up": f,
                    "act_scales": max(d, f) // 32, "scores": SCORE_CHUNK, "lora_mid": rank}
    bram = sum(memory_blocks(n, 32, "bram") for n in fp32_vectors.values())
    bram += memory_blocks(max(d, f), 8, "bram")  # int8 activation codes
    bram += FIXED_BUFFER_BRAM36
    nbytes = 4 * sum(fp32_vectors.values()) + max(d, f)
    pool.take(bram36=bram)
    return Reservation("activations and buffers", nbytes, bram, 0.0, "BRAM",
                       {"fp32_vectors": fp32_vectors, "fixed_bram36": FIXED_BUFFER_BRAM36})


def kv_bytes_per_token(config: ModelConfig) -> int:
    return config.n_layers * 2 * config.kv_dim * 2


def _kv_reservation(config: ModelConfig, kv_tokens: int | None, pool: _Pool) -> Reservation:
    if not kv_tokens:
        return Reservation("KV cache", 0, 0.0, 0.0, "DDR",
                           {"tokens": None, "bytes_per_token": kv_bytes_per_token(config)})
    elements = kv_tokens * config.n_layers * 2 * config.kv_dim
    bram, uram = pool.writable(-(-elements // 4))
    where = "/".join(p for p, n in (("URAM", uram), ("BRAM", bram)) if n)
    return Reservation(f"KV cache {kv_tokens} tokens fp16", elements * 2, bram, uram, where,
                       {"tokens": kv_tokens, "bytes_per_token": kv_bytes_per_token(config)})


def _reserve(config, board, budget, slots, rank, targets, dtype, group, kv_tokens):
    pool = _Pool(math.floor(board.bram36 * budget * 2) / 2, float(math.floor(board.uram * budget)))
    totals = (pool.bram36, pool.uram)
    stage = "LoRA memory"
    try:
        lora = _lora_reservation(config, slots, rank, targets, dtype, pool)
        stage = "activation buffers"
        buffers = _buffer_reservation(config, rank, group, pool)
        stage = "KV cache"
        kv = _kv_reservation(config, kv_tokens, pool)
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
              per_tensor_groups: dict | None = None) -> Plan:
    """Place a model's quantized tensors on a board. `config` is a ModelConfig or a LoadedModel (only shapes
    matter); `board` a name from boards.json or a Board; `ddr` units to stream from DDR whatever the room
    (parse_ddr_units: a string like "1,3-5,head" or a list of layer numbers, "head", "embedding", "all").
    per_tensor_bits and per_tensor_groups (a build's choices) override bits and group by tensor name.
    See the module docstring for the model."""
    config = _as_config(config)
    board = get_board(board)
    _check_bits(bits, "the model")
    if isinstance(group, bool) or group not in SUPPORTED_GROUPS:
        raise RomaError(f"unsupported group size {group!r}",
                        hint=f"groups are {', '.join(map(str, SUPPORTED_GROUPS))} weights")
    per_tensor_bits = _validate_per_tensor(per_tensor_bits, config, "per_tensor_bits", _check_bits)
    per_tensor_groups = _validate_per_tensor(per_tensor_groups, config, "per_tensor_groups",
                                             lambda g, name: _check_group(g, name, config))
    targets = _check_lora(lora_slots, lora_rank, lora_targets, lora_dtype)
    check_kv_tokens(kv_tokens, config)
    if kv_tokens and context is not None and context > kv_tokens:
        raise RomaError(f"--context {context} is longer than the on-chip KV cache of {kv_tokens} tokens, which "
                        "bounds every session", hint=f"estimate at --context {kv_tokens} or less, or give a larger "
                                                     "--kv-onchip")
    if not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise RomaError(f"budget must be a fraction in (0, 1], not {budget!r}")

    if scales not in SCALE_BITS:
        raise RomaError(f"unknown scale format {scales!r}", hint=f"use {' or '.join(SCALE_BITS)}")
    units = build_tensors(config, bits, group, per_tensor_bits, scales, per_tensor_groups)  # checks the group
    forced = check_ddr_units(parse_ddr_units(ddr), config)

    reserved, stage, (bram_budget, uram_budget) = _reserve(config, board, budget, lora_slots, lora_rank, targets,
                                                           lora_dtype, group, kv_tokens)
    if reserved is None:
        _raise_no_room(config, board, budget, lora_slots, lora_rank, targets, lora_dtype, group, kv_tokens, stage)
    lora, buffers, kv, pool = reserved

    banks = _Banks()
    for unit in units:
        if _unit_key(unit) in forced:
            for t in unit:
                t.placement, t.bram36, t.uram = DDR_STREAM, 0.0, 0.0
        else:
            _place_unit(unit, pool, banks)

    plan = Plan(model=config, board=board, bits=bits, group=group, per_tensor_bits=per_tensor_bits, budget=budget,
                lora=lora, buffers=buffers, kv_cache=kv, tensors=[t for u in units for t in u],
                bram36_budget=bram_budget, uram_budget=uram_budget, estimate={}, ddr_forced=sorted(
                    forced, key=lambda u: (isinstance(u, str), u)), scales=scales,
                per_tensor_groups=per_tensor_groups)
    plan.estimate = estimate(plan, context=context)
    return plan


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
                    lora_dtype: str = "fp16", lora_slots: int = 1, budget: float = 0.8) -> None:
    """RomaError unless an on-chip KV cache of kv_tokens positions fits the model's context and the board's budget
    after the LoRA memory and the activation buffers: the reservations make_plan takes before any weight, so
    `roma compile` can refuse it before it writes anything."""
    config = _as_config(config)
    check_kv_tokens(kv_tokens, config)
    if not kv_tokens:
        return
    board = get_board(board)
    targets = _check_lora(lora_slots, lora_rank, lora_targets, lora_dtype)
    reserved, stage, _ = _reserve(config, board, budget, lora_slots, lora_rank, targets, lora_dtype, None, kv_tokens)
    if reserved is None:
        _raise_no_room(config, board, budget, lora_slots, lora_rank, targets, lora_dtype, None, kv_tokens, stage)


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


def check_ddr_units(units: list, config: ModelConfig) -> set:
    """The units of parse_ddr_units as _unit_key values; RomaError for a unit this model does not have."""
    n = config.n_layers
    if "all" in units:
        units = list(range(n)) + ["head"] + ([] if config.tied_embeddings else ["embedding"])
    bad = [u for u in units if isinstance(u, int) and not 0 <= u < n]
    if bad:
        raise RomaError(f"--ddr names layer {bad[0]}, but {config.name} has layers 0-{n - 1}")
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


class _Banks:
    """The weight memories: one bank per (memory kind, code bits, group), tensors stacked in depth."""

    def __init__(self):
        self.items: dict[tuple, int] = {}

    def cost(self, kind: str, bank: tuple, items: int) -> float:
        if bank[0] == "fp32":
            return memory_blocks(items, 32, kind)
        if bank[0] == "rows":
            return memory_blocks(items, bank[1], kind)
        _, bits, group, scale_bits = bank
        return _matrix_blocks(items, bits * group, scale_bits, kind)

    def delta(self, kind: str, t: TensorPlan) -> float:
        cost = 0.0
        for bank, words in t.memories():
            have = self.items.get((kind, bank), 0)
            cost += self.cost(kind, bank, have + words) - self.cost(kind, bank, have)
        return cost

    def add(self, kind: str, t: TensorPlan) -> None:
        for bank, words in t.memories():
            self.items[(kind, bank)] = self.items.get((kind, bank), 0) + words


def _place_unit(unit: list[TensorPlan], pool: _Pool, banks: _Banks) -> None:
    """All tensors of the unit on chip (each BRAM first, then URAM), or all of them in DDR."""
    saved = (pool.bram36, pool.uram, dict(banks.items))
    for t in unit:
        cost_b = banks.delta("bram", t)
        if cost_b <= pool.bram36 + 1e-9:
            pool.take(bram36=cost_b)
            banks.add("bram", t)
            t.placement, t.bram36, t.uram = BRAM_ROM, cost_b, 0.0
            continue
        cost_u = banks.delta("uram", t)
        if cost_u <= pool.uram + 1e-9:
            pool.take(uram=cost_u)
            banks.add("uram", t)
            t.placement, t.bram36, t.uram = URAM_LOAD_ONCE, 0.0, cost_u
            continue
        pool.bram36, pool.uram, banks.items = saved
        for u in unit:
            u.placement, u.bram36, u.uram = DDR_STREAM, 0.0, 0.0
        return


def _raise_no_room(config, board, budget, slots, rank, targets, dtype, group, kv_tokens, stage):
    pct = f"{budget:.0%}"
    if stage == "LoRA memory":
        fits = lambda r: _reserve(config, board, budget, slots, r, targets, dtype, group,  # noqa
                                  kv_tokens)[0] is not None
        best = next((r for r in range(rank - 1, -1, -1) if fits(r)), None)
        need = slots * lora_elements(config, rank, targets) * (2 if dtype == "fp16" else 1)
        hint = (f"the largest rank that fits with these targets is {best} (the slot rank: roma compile "
                f"--lora-slot-rank, roma plan --lora-rank)" if best else "no rank > 0 fits with these targets")
        alts = ["fewer --lora-targets (e.g. wq wv)", "--lora-slots 0 for no LoRA unit"]
        if slots > 1:
            alts.insert(1, "fewer --lora-slots")
        if dtype == "fp16":
            alts.insert(1, "--lora-dtype int8")
        raise RomaError(
            f"LoRA rank {rank} ({slots} slot{'s' if slots != 1 else ''}, {dtype}, {len(targets)} targets x "
            f"{config.n_layers} layers) needs "
            f"{need / 2**20:.2f} MiB of writable on-chip memory; {board.name} has "
            f"{budget * (board.bram_bytes + board.uram_bytes) / 2**20:.2f} MiB in its {pct} budget",
            hint=f"{hint}; or use {', '.join(alts)}")
    if stage == "KV cache":
        fits = lambda n: _reserve(config, board, budget, slots, rank, targets, dtype, group, n)[0] is not None  # noqa
        lo, hi = 0, kv_tokens
        while lo < hi:  # largest n that fits
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        raise RomaError(
            f"an on-chip KV cache of {kv_tokens} tokens ({kv_tokens * kv_bytes_per_token(config) / 2**20:.2f} MiB) "
            f"does not fit in {board.name}'s {pct} budget after the LoRA memory",
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
    lanes = compute_lanes(board)
    ctx = context if context is not None else (plan.kv_cache.detail.get("tokens") or DEFAULT_CONTEXT)
    dsp_macs = max(1.0, board.dsp * DSP_FRACTION / DSPS_PER_MAC)

    # Tiles are folded so that every weight block is read in parallel (each block holds a slice of every layer
    # of its tier), so a tier's read width is its block count times the block's port width.
    port_bits = {BRAM_ROM: sum(t.bram36 for t in plan.tensors if t.group) * BRAM_BITS_PER_CYCLE,
                 URAM_LOAD_ONCE: sum(t.uram for t in plan.tensors if t.group) * URAM_BITS_PER_CYCLE}
    t_weights = 0.0
    ddr_bytes = 0.0
    weights_read = 0
    for t in plan.tensors:
        if t.kind == "norm":
            if t.placement == DDR_STREAM:
                ddr_bytes += t.bytes
                t_weights += t.bytes / bw
            continue
        if t.read_per_token == "row":  # embedding lookup: one row
            row_bytes = t.bytes / t.rows
            if t.placement == DDR_STREAM:
                ddr_bytes += row_bytes
                t_weights += row_bytes / bw
            continue
        n = t.params
        weights_read += n
        t_compute = n / (lanes * 4 / t.bits) / f
        if t.placement == DDR_STREAM:
            t_mem = t.bytes / bw
            ddr_bytes += t.bytes
        else:
            t_mem = n * t.bits_per_weight / port_bits[t.placement] / f
        t_weights += max(t_compute, t_mem)

    attn_macs = c.n_layers * 2 * c.n_heads * c.head_dim * ctx
    lora_macs = plan.lora.detail.get("elements", 0) // max(1, plan.lora.detail.get("slots", 1))  # one active slot
    t_attn_compute = attn_macs / dsp_macs / f
    kv_read = kv_bytes_per_token(c) * ctx
    t_kv_mem = kv_read / bw if plan.kv_cache.placement == "DDR" else 0.0
    if plan.kv_cache.placement == "DDR":
        ddr_bytes += kv_read
    t_attn = max(t_attn_compute, t_kv_mem)
    t_lora = lora_macs / dsp_macs / f
    total = t_weights + t_attn + t_lora
    return {
        "label": "estimate (roofline upper bound at nominal peak bandwidth and clock; not a measurement)",
        "decode_tokens_per_s": 1.0 / total,
        "us_per_token": total * 1e6,
        "breakdown_us": {"weights": t_weights * 1e6, "attention": t_attn * 1e6, "lora": t_lora * 1e6},
        "context_tokens": ctx,
        "ddr_bytes_per_token": int(ddr_bytes),
        "ddr_bound_tokens_per_s": (bw / ddr_bytes) if ddr_bytes else None,
        "weights_read_per_token": weights_read,
        "model": {"clock_mhz": board.clock_mhz, "ddr_bandwidth_gbs": board.ddr_bandwidth_gbs,
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
    lines.append(plan.summary)
    if plan.ddr_forced:
        lines.append(f"sent to DDR on purpose (--ddr): {format_ddr_units(plan.ddr_forced)}")
    on, total = plan.on_chip_bytes, plan.total_bytes
    lines.append(f"on chip {_mib(on)} ({on / total:.0%}), streamed from DDR {_mib(total - on)}")
    e = plan.estimate
    ddr = e["ddr_bytes_per_token"]
    bound = f", DDR-bound at most {e['ddr_bound_tokens_per_s']:,.0f} tokens/s" if ddr else ""
    lines.append(f"estimate: ~{e['decode_tokens_per_s']:,.0f} decode tokens/s at context {e['context_tokens']} "
                 f"({e['us_per_token']:,.1f} us/token; DDR traffic {_mib(ddr)}/token incl. KV at {b.ddr_bandwidth_gbs:g} GB/s{bound}; "
                 f"{e['model']['lut_select_lanes']:,} LUT-select lanes at {b.clock_mhz:g} MHz)")
    lines.append("  " + e["label"])
    return "\n".join(lines)
