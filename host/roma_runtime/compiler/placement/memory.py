"""The memory model of the synthesized top (hw/hls/roma_core.cpp), one for the planner and the footprint check.

Two users, one set of rules:

- the footprint check (footprint.py) reads the arrays from the object file of the compiled synthesis path (their
  element width and shape from DWARF) and lays each out here;
- the planner (plan.py) lists the arrays the top declares for a plan (``declared_arrays`` and the pieces it is
  made of: ``bank_arrays``, ``engine_locals``, ``core_arrays``, ``lora_arrays``, ``kv_array``) and lays each out
  here, so that its on-chip figures are the footprint's, array by array.

Layout (HLS_RULES.md: "Count with the layout the code declares"): the ARRAY_PARTITION / ARRAY_RESHAPE and
BIND_STORAGE pragmas of the HLS sources that apply to an array (PRAGMA_SITES names where they are for a static
array: on the array itself, or on the kernel argument it is passed to; a function's local array takes the pragmas
of that function on its name) split it into banks of width x depth. A partition multiplies the banks, a reshape
the width; each bank costs the blocks of the physical aspect ratios (BRAM_SHAPES: RAMB36 and RAMB18 halves;
URAM_SHAPES: 4K x 72), counted by ``shape_cost``: no packing of several elements into one word unless a RESHAPE
says so. An array without BIND_STORAGE is counted in BRAM, except a bank of depth <= LUTRAM_MAX_DEPTH, which is
LUTRAM (FINN's rule for small memories). Banks of depth 1 (complete partitioning) are registers. A BIND_STORAGE
impl other than uram (bram, auto, lutram on a deep bank) is counted in BRAM.

A weight bank takes the pragmas of its tier: a BRAM-ROM bank bank_tiles' (rom_2p impl=bram: two read ports, 36 bits
wide at most), a URAM bank load_uram_bank's (impl = uram, reshaped to 64-bit words). The LoRA unit is laid out by its contract's pragmas
(``contract_pragma``, mirroring roma_core.cpp's: values and int8 row scales reshaped to 64-bit words, BIND_STORAGE
impl = ROMA_LORA_IMPL; rank and scale in LUTRAM), because the plan chooses ROMA_LORA_IMPL before a header exists.

What the top declares for a plan, array by array (roma_core.cpp and the kernel headers):
- per GEMV engine (one per configuration: bits, group, scale format, tiles, tier; shared by every layer and
  linear of that configuration, with the embedding and an untied output engines of their own unless a streamed head
  runs on the layers' DDR engine, model_header.head_on_layers_engine), on chip: its bank,
  Unit<U>::planes [TILES][words] of 32-bit plane words and the scale arrays of its format (fp16: scales and mins
  [TILES][params]; q8: params [TILES][params] and exps [TILES][rows]), 16 bits, each tile's words of every
  on-chip tensor of the engine stacked; a DDR engine declares no bank;
- per engine, the local arrays of its kernel instances, sized by the largest tensor it serves (rows per tile,
  columns): gemv_unit's xs [NG]; brom_gemv_banks_rt's
  cand, xg and xsum (once, shared by its PEs) and acc [TILES][ROWS] (ROM/URAM), or brom_ddr_gemv_rt's cand, xg,
  xsum, acc [ACC_SETS][PORTS][ROWS] and ex (DDR: a tile per weight port at once; two sets of accumulators when
  a round's outputs go out during the next round);
- once: g_norms [2 N_LAYERS + 1][DIM] fp32 (every layer's norms stay on chip, whatever the layer's tier),
  g_x, g_q [PREFILL_CHUNK][DIM], g_k, g_v [PREFILL_CHUNK][KV_DIM] (the board's prefill_chunk), g_logits [VOCAB] (the whole
  vocabulary's fp32 logits), attention's score [TOKEN_LANES][HEADS][MAX_CTX] (MAX_CTX: the on-chip KV positions,
  else the build's context), the sampler's g_recent ring, the LoRA unit (C1) and the one lora_apply's t [rank], the on-chip
  KV cache g_kv_chip [N_LAYERS][2][positions * KV_DIM] fp16, and the locals of the one layer(), ffn_step() and
  forward() instance (layer's h, qr, kr, vr, att, gate and up, two of each: h0, h1, ...; ffn_step's o_f, o_b; a
  row per token lane; forward's h, the chunk's RoPE angles rope_cos and rope_sin, bound to LUTRAM, and the GEMV
  inputs' codes q0, q1 [CODE_COLS] int8 and scales s0, s1 [CODE_COLS / smallest group], a row per lane), of
  attention (ql, acc, a row per lane) and of the activation quantizers (act_quant's amax_bits and inv
  [CODE_COLS / group], per group, token lane and quantizer: quantize_block's, and quantize_ahead's for the layers'
  groups; a role's groups above the activation lanes share one, sized by the smallest: quantizers).
Not listed: locals the footprint finds in LUTRAM or registers in every build (sampler pools, RoPE tables,
partial sums, the status words); they cost no block RAM.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ...artifact.boards import ElementwiseLanes, logits_banks, pow2_at_least
from ...artifact.interface import HLS_DIR, kernel_constants, load_constants
from ...artifact.kv_layout import port_lanes
from ...artifact.uram_image import tile_sizes
from ...errors import RomaError
from ...model.config import ModelConfig

# (data width, depth, cost in BRAM36 tiles): RAMB36 aspect ratios, then RAMB18 halves.
BRAM_SHAPES = (
    (1, 32768, 1.0), (2, 16384, 1.0), (4, 8192, 1.0), (9, 4096, 1.0), (18, 2048, 1.0), (36, 1024, 1.0),
    (72, 512, 1.0),
    (1, 16384, 0.5), (2, 8192, 0.5), (4, 4096, 0.5), (9, 2048, 0.5), (18, 1024, 0.5), (36, 512, 0.5),
)
URAM_SHAPES = ((72, 4096, 1.0),)
# Two ports that both read (or both write) put a BRAM in true dual-port mode: 36 bits a port at most (the 72-bit
# aspect ratio is simple dual-port's, one read and one write)
TRUE_DUAL_PORT = ("rom_2p", "ram_t2p")
BRAM_TDP_SHAPES = tuple(s for s in BRAM_SHAPES if s[0] <= 36)
# A bank this shallow without a BIND_STORAGE is counted as LUTRAM, not BRAM (FINN's MVAU estimate: a weight memory
# of depth <= 128 goes to distributed RAM)
LUTRAM_MAX_DEPTH = 128

# roma_core.cpp's Lin order: the layers' linears, then the embedding and the output
LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "token_embd", "output")
L_EMBD, L_OUTPUT = 7, 8
TIERS = ("rom", "uram", "ddr")  # an engine's tier: BRAM-ROM bank, URAM-load-once bank (C2), DDR stream


def shape_cost(width: int, depth: int, shapes) -> float:
    """Blocks of one memory of `width` x `depth`: for the best single aspect ratio, ceil(width / w) columns times
    the full rows of blocks, plus a tail row for the remaining words (which may use a shallower aspect ratio)."""
    best = math.inf
    for w, d, cost in shapes:
        cols = -(-width // w)
        full, rem = divmod(depth, d)
        total = cols * full * cost
        if rem:
            total += min(-(-width // w2) * -(-rem // d2) * c2 for w2, d2, c2 in shapes)
        best = min(best, total)
    return best


@dataclass
class Pragma:
    directive: str  # ARRAY_PARTITION, ARRAY_RESHAPE, BIND_STORAGE, ALLOCATION
    variable: str
    function: str
    options: dict
    where: str  # file:line, or the contract that defines it

    def text(self) -> str:
        return f"{self.directive} " + " ".join(f"{k}={v}" for k, v in self.options.items())


@dataclass
class Array:
    name: str  # demangled symbol (with ".member" for a struct member); locals: "function<...>::var"
    var: str  # the variable's own name (pragmas and PRAGMA_SITES use it)
    bytes: int  # all instances
    elem_bits: int
    dims: list
    instances: int = 1  # a function's local array: one memory per RTL instance of the function
    banks: int = 1
    width: int = 0
    depth: int = 0
    impl: str = "bram"
    bram36: float = 0.0
    uram: float = 0.0
    pragmas: list = field(default_factory=list)


def contract_pragma(directive: str, variable: str, where: str, **options) -> Pragma:
    """A layout an issue-19 contract defines (C1, C2) for an array the HLS sources may not declare yet."""
    return Pragma(directive, variable, "", {k: str(v) for k, v in options.items()}, where)


# --- pragmas of the HLS sources -----------------------------------------------------------------------------

_FUNC = re.compile(r'^(?:[\w:<>,\*&\s"]+?\s)?[\*&]?(\w+)\s*\(')


def read_pragmas(sources: list[Path], defines: dict[str, str]) -> list[Pragma]:
    """ARRAY_PARTITION / ARRAY_RESHAPE / BIND_STORAGE / ALLOCATION pragmas with the function they sit in (macros
    such as ROMA_KV_ONCHIP_IMPL resolved from `defines`)."""
    out = []
    for path in sources:
        func = ""
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line[:1].isalpha() and not line.startswith(("template", "typedef", "namespace", "using")):
                m = _FUNC.match(line)
                if m:
                    func = m.group(1)
            m = re.match(r"\s*#pragma\s+HLS\s+(ARRAY_PARTITION|ARRAY_RESHAPE|BIND_STORAGE|ALLOCATION)\s+(.*)", line,
                         re.IGNORECASE)
            if not m:
                continue
            opts = {k.lower(): defines.get(v.strip(), v.strip())
                    for k, v in re.findall(r"(\w+)\s*=\s*((?:[\w.\s\*\+\-/()]+?)(?=\s+\w+\s*=|$))", m.group(2))}
            out.append(Pragma(m.group(1).upper(), opts.pop("variable", ""), func, opts, f"{path.name}:{n}"))
    return out


def hls_sources() -> list[Path]:
    return [HLS_DIR / "roma_core.cpp", *sorted((HLS_DIR / "include" / "roma").glob("*.h"))]


@lru_cache(maxsize=8)
def _source_pragmas(defines: tuple) -> tuple:
    return tuple(read_pragmas(hls_sources(), dict(defines)))


def pragma_defines(pe: int, ports: int, port_bits: int, lanes: ElementwiseLanes, token_lanes: int = 1, *,
                   act_lanes: int) -> dict[str, str]:
    """The values of the build-wide symbols the sources' pragma factors name: ROMA_GEMV_PE (roma_model.h: the plan's
    pe), ROMA_WEIGHT_PORTS (roma_model.h: the board's weight_ports), GEMV_IN_LANES (roma_core.cpp: roma_model.h's
    ROMA_ACT_LANES, the board's act_lanes, the GEMV inputs the engines' quantizers read per cycle at most),
    GEMV_OUT_LANES (roma_core.cpp: the power of two covering pe, twice pe with token lanes (decode's row split), and
    the ports, the rows a GEMV writes per cycle), LOGITS_BANKS (roma_core.cpp: the power of two covering the ports, the logits the head writes per cycle,
    and a port's width in fp32, the logits LOGITS_OUT sends per cycle)
    and GEMV_CHAIN_LANES (roma_core.cpp: the larger of it and GEMV_IN_LANES, a buffer one GEMV writes and the
    next one reads); the elementwise units' lanes (roma_model.h ROMA_*_LANES: the build's, `lanes`) and roma_core's
    factors of the buffers they read and write (STREAM_LANES .. UP_LANES, each the larger of its users' lanes); TT
    (roma_model.h TOKEN_LANES: the token lanes, the token dimension's partition of the chunk's buffers and the
    elementwise units' instances) and RESIDUAL_ADDS (two per lane)."""
    act = act_lanes
    out_lanes = pow2_at_least(max(pe * (2 if token_lanes > 1 else 1), ports))
    chain = max(out_lanes, act)
    values = {"ROMA_GEMV_PE": pe, "ROMA_WEIGHT_PORTS": ports, "GEMV_IN_LANES": act, "GEMV_OUT_LANES": out_lanes,
              "GEMV_CHAIN_LANES": chain, "NORM_LANES": lanes.norm, "SWIGLU_LANES": lanes.swiglu,
              "ROPE_LANES": lanes.rope, "RESIDUAL_LANES": lanes.residual,
              "STREAM_LANES": max(lanes.norm, lanes.residual), "NORM_OUT_LANES": max(act, lanes.norm),
              "ROPE_IN_LANES": max(out_lanes, 2 * lanes.rope), "ROPE_OUT_LANES": 2 * lanes.rope,
              "RESIDUAL_IN_LANES": max(out_lanes, lanes.residual), "GATE_LANES": max(chain, lanes.swiglu),
              "UP_LANES": max(out_lanes, lanes.swiglu), "LOGITS_BANKS": logits_banks(ports, port_bits),
              "TT": token_lanes, "RESIDUAL_ADDS": 2 * token_lanes}
    return {k: str(v) for k, v in values.items()}


def source_pragmas(defines: dict[str, str]) -> list[Pragma]:
    """The pragmas of this checkout's HLS sources (read once per set of macro values)."""
    return list(_source_pragmas(tuple(sorted(defines.items()))))


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
        ast.Div: operator.floordiv}


def _eval_factor(expr: str, env: dict[str, int], what: str) -> int:
    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in env:
                raise RomaError(f"cannot evaluate the factor '{expr}' of {what}: '{node.id}' is unknown",
                                hint="add the symbol to memory.PRAGMA_SITES (mirror its definition in the source)")
            return env[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise RomaError(f"cannot evaluate the factor '{expr}' of {what}")
    return ev(ast.parse(expr.strip(), mode="eval").body)


# Where the layout pragmas of a static array are: array name -> [(function holding the pragma, pragma's variable,
# dims the argument lacks in front (a row slice passed as a 1-D argument), factor symbols)]. Factor symbols are
# functions of (the array's record, its sibling arrays by name, roma_model.h's constants), each mirroring the
# source line that defines it. A pragma whose factor names a symbol not given here is an error, so a changed
# source cannot be counted with a stale layout.
def _wps(arr, sib, c):  # brom_tile.h BromTileConfig::WPS = PLANE_WORDS / PARAMS
    prm = sib.get("scales") or sib.get("params")
    return arr.dims[-1] // prm.dims[-1]


PRAGMA_SITES = {
    # a weight bank [TILES][words]: the engine passes it whole to bank_tiles (a BRAM ROM's storage) and
    # brom_gemv_banks_rt (a bank per tile, WPS banks each); a URAM bank's storage is bound where CMD_LOAD_WEIGHTS
    # writes it, the whole bank passed to load_uram_bank. A site with a tier ("rom" or "uram") applies to the
    # banks of that tier only.
    "planes": [("bank_tiles", "planes", 0, {}, "rom"), ("load_uram_bank", "planes", 0, {}, "uram"),
               ("brom_gemv_banks_rt", "planes", 0, {"WPS": _wps})],
    "scales": [("load_uram_bank", "prm", 0, {}, "uram"), ("brom_gemv_banks_rt", "prm", 0, {})],
    "params": [("load_uram_bank", "prm", 0, {}, "uram"), ("brom_gemv_banks_rt", "prm", 0, {})],
    "mins": [("load_uram_bank", "aux", 0, {}, "uram"), ("brom_gemv_banks_rt", "aux", 0, {})],
    "exps": [("load_uram_bank", "aux", 0, {}, "uram"), ("brom_gemv_banks_rt", "aux", 0, {})],
    "g_norms": [("roma_core", "g_norms", 0, {})],  # cyclic NORM_LANES (pragma_defines)
    "g_x": [("roma_core", "g_x", 0, {})],  # cyclic STREAM_LANES
    "g_q": [("roma_core", "g_q", 0, {})],  # cyclic ROPE_OUT_LANES
    "g_k": [("roma_core", "g_k", 0, {})],  # cyclic ROPE_OUT_LANES
    "score": [("attention_lanes", "score", 0, {"GROUP": lambda a, s, c: c["N_HEADS"] // c["N_KV_HEADS"]})],
    "g_kv_chip": [("roma_core", "g_kv_chip", 0, {"ATT_SIMD": lambda a, s, c: port_lanes(c["HEAD_DIM"], c["KV_PORT_BITS"])})],
    "g_logits": [("roma_core", "g_logits", 0, {})],
    "g_v": [("roma_core", "g_v", 0, {})],  # cyclic GEMV_OUT_LANES (pragma_defines)
    # the LoRA unit's members (roma_core.cpp: 64-bit words of fp16 values or int8 codes, and of fp32 row scales)
    "values": [("roma_core", "g_lora.values", 0, {"LORA_VALUES_PER_WORD": lambda a, s, c: 64 // a.elem_bits})],
    "row_scale": [("roma_core", "g_lora.row_scale", 0, {"LORA_ROW_SCALES_PER_WORD": lambda a, s, c: 2})],
    "rank": [("roma_core", "g_lora.rank", 0, {})],
    "scale": [("roma_core", "g_lora.scale", 0, {})],
}


def static_pragmas(arr: Array, pragmas: list[Pragma], siblings: dict, consts: dict, tier: str | None = None) -> list:
    """(pragma, leading dims, factor symbols) that lay out a static array: PRAGMA_SITES (tier: a weight bank's,
    "rom" or "uram"; the sites of the other tier do not apply)."""
    out = []
    for func, var, lead, syms, *site_tier in PRAGMA_SITES.get(arr.var, []):
        if site_tier and site_tier[0] != tier:
            continue
        env = {k: f(arr, siblings, consts) for k, f in syms.items()}
        out += [(p, lead, env) for p in pragmas if p.variable == var and p.function == func]
    return out


def local_pragmas(function: str, arr: Array, pragmas: list[Pragma], env: dict) -> list:
    """(pragma, 0, env) of `function` on a local array's name; env: the instance's template parameters."""
    return [(p, 0, env) for p in pragmas if p.function == function and p.variable == arr.var]


def apply_layout(arr: Array, applied: list, strict: bool = True) -> Array:
    """Banks, width, depth, implementation and blocks of one array from the pragmas that apply to it. strict: a
    factor that cannot be evaluated is an error; otherwise that pragma is noted and not applied."""
    dims = list(arr.dims)
    banks, width, kind_of_ram = 1, arr.elem_bits, ""
    for p, lead, env in applied:
        if p.directive == "BIND_STORAGE":
            arr.impl = p.options.get("impl", "bram").lower()
            kind_of_ram = p.options.get("type", "").lower()
            arr.pragmas.append(f"{p.text()} ({p.where})")
            continue
        kind = p.options.get("type", "complete").lower()
        d = int(p.options.get("dim", "1"))
        targets = range(lead, len(dims)) if d == 0 else [lead + d - 1]
        try:
            factors = [dims[t] if kind == "complete" else _eval_factor(p.options["factor"], env, f"{arr.name} "
                                                                           f"({p.where})") for t in targets]
        except RomaError:
            if strict:
                raise
            arr.pragmas.append(f"{p.text()} ({p.where}; factor not resolved, not applied)")
            continue
        arr.pragmas.append(f"{p.text()} ({p.where})")
        for t, f in zip(targets, factors):
            if t >= len(dims):
                raise RomaError(f"{p.where}: dim {d} of {p.variable} is outside {arr.name}{dims}")
            f = min(f, dims[t])
            dims[t] = -(-dims[t] // f)
            if p.directive == "ARRAY_RESHAPE":
                width *= f
            else:
                banks *= f
    arr.banks, arr.width, arr.depth = banks, width, math.prod(dims)
    arr.bram36 = arr.uram = 0.0
    if arr.depth <= 1:
        arr.impl = "regs"
    elif arr.depth <= LUTRAM_MAX_DEPTH and not any(p.directive == "BIND_STORAGE" for p, _, _ in applied):
        arr.impl = "lutram"
    if arr.impl in ("regs", "lutram"):
        return arr  # registers / LUTs: no block RAM
    shapes = URAM_SHAPES if arr.impl == "uram" else BRAM_TDP_SHAPES if kind_of_ram in TRUE_DUAL_PORT else BRAM_SHAPES
    cost = arr.instances * banks * shape_cost(width, arr.depth, shapes)
    if arr.impl == "uram":
        arr.uram = cost
    else:
        arr.bram36 = cost
    return arr


def array_key(name: str) -> str:
    """The name the planner and the footprint compare arrays by: a bank keeps its engine (Unit<U>), other
    template arguments collapse ('attention_lanes<9, 3, ...>::score' -> 'attention_lanes<...>::score'); a static
    local loses its function's argument list and namespace."""
    if name.startswith("Unit<"):
        return name
    name = name.replace("(anonymous namespace)::", "")
    out, depth = [], 0
    for ch in name:  # template arguments nest: drop everything between the outermost < >
        if ch == "<":
            if depth == 0:
                out.append("<...>")
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return _strip_arguments("".join(out)).replace("roma::", "")


def _strip_arguments(name: str) -> str:
    """A static local's name without its function's argument list, whose types may hold parentheses of their own
    ('f<...>(float const (*) [(4)*(16)], int)::score' -> 'f<...>::score')."""
    end = name.rfind(")::")
    if end < 0:
        return name
    depth = 0
    for i in range(end, -1, -1):
        depth += {")": 1, "(": -1}.get(name[i], 0)
        if depth == 0:
            return name[:i] + name[end + 1:]
    return name


# --- what the top declares for a plan -----------------------------------------------------------------------


LAYERS = -1  # EngineConfig.role of an engine of the layers' linears


@dataclass(frozen=True)
class EngineConfig:
    """What one GEMV engine is built for (roma_model.h UNIT_*): a configuration and tier, shared by the layers'
    linears (role LAYERS), or the embedding's or an untied output's own (role L_EMBD, L_OUTPUT)."""
    role: int
    bits: int
    group: int
    scales: str  # "fp16" or "q8"
    tier: str  # TIERS
    tiles: int = 1

    def tensor_tiles(self, rows: int, ports: int) -> int:
        """The tiles of a tensor of `rows` outputs on this engine, through `ports` weight ports: a DDR tensor's own
        (ddr_tiles; the lm head's differ from the layers' where it runs on their DDR engine), else the engine's."""
        return ddr_tiles(rows, ports) if self.tier == "ddr" else self.tiles


def hw_constants() -> dict[str, int]:
    """The roma_core.h constants the arrays' sizes use."""
    return {"SAMPLER_RING": load_constants()["SAMPLER_RING"]}


def model_consts(config: ModelConfig, kv_port_bits: int) -> dict[str, int]:
    """roma_model.h's dimensions of a model and the board's KV port width (the names PRAGMA_SITES' factor symbols
    read)."""
    return {"N_LAYERS": config.n_layers, "DIM": config.dim, "FFN_DIM": config.ffn_dim, "N_HEADS": config.n_heads,
            "N_KV_HEADS": config.n_kv_heads, "HEAD_DIM": config.head_dim, "KV_DIM": config.kv_dim,
            "VOCAB": config.vocab_size, "KV_PORT_BITS": kv_port_bits}


def pv_partials(kv_dim: int, simd: int, sets: int = 1) -> int:
    """attention.h AttentionConfig::PV_PARTIALS: the partial sums of attention's P x V pass, for cache rows of
    kv_dim elements read `simd` a cycle (enough that each comes back after the fp32 adder's latency), times the KV
    sets (a set's positions take every sets-th partial)."""
    chunks, fadd = kv_dim // simd, kernel_constants("types.h")["FADD_LATENCY"]
    return sets * (1 if chunks >= fadd else 2 if 2 * chunks >= fadd else 4)


def lin_shape(config: ModelConfig, lin: int) -> tuple[int, int]:
    """(rows, cols) of roma_core.cpp's linear `lin` (lin_rows, lin_cols)."""
    d, kv, f = config.dim, config.kv_dim, config.ffn_dim
    qdim = config.n_heads * config.head_dim
    rows = (qdim, kv, kv, d, f, f, d, config.vocab_size, config.vocab_size)[lin]
    cols = qdim if lin == 3 else f if lin == 6 else d
    return rows, cols


def _bytes(bits: int, dims) -> int:
    return math.prod(dims) * max(1, bits // 8)


def _laid_out(arrays: list[Array], pragmas: list[Pragma], consts: dict, tier: str | None = None) -> list[Array]:
    """Static arrays laid out by their PRAGMA_SITES (siblings: the arrays of the same owner)."""
    groups: dict[str, dict] = {}
    for a in arrays:
        groups.setdefault(a.name.rsplit("::", 1)[0], {})[a.var] = a
    for a in arrays:
        apply_layout(a, static_pragmas(a, pragmas, groups[a.name.rsplit("::", 1)[0]], consts, tier))
    return arrays


def tile_words(config: ModelConfig, e: EngineConfig, lin: int) -> tuple[int, int, int]:
    """(plane words, scale entries, aux entries) of one tile of linear `lin`'s tensor on engine e (roma_core.cpp
    tile_words: aux entries are per row for q8, per step for fp16)."""
    rows_all, cols = lin_shape(config, lin)
    return tile_sizes(e.bits, e.group, rows_all // e.tiles, cols, e.scales)


def bank_arrays(config: ModelConfig, e: EngineConfig, index: int, on_chip: list[int],
                pragmas: list[Pragma]) -> list[Array]:
    """Unit<index>'s bank arrays for its on-chip tensors (their linears, `on_chip`; none for a DDR engine): each
    tile's words of every tensor, stacked. A bank is laid out by the sources' pragmas of its tier (a URAM bank's:
    load_uram_bank's, impl = uram, 64-bit words)."""
    if e.tier == "ddr" or not on_chip:
        return []
    words = [sum(tile_words(config, e, lin)[k] for lin in on_chip) for k in range(3)]
    owner = f"Unit<{index}>"
    shapes = [("planes", 32, words[0])] + (
        [("params", 16, words[1]), ("exps", 16, words[2])] if e.scales == "q8" else
        [("scales", 16, words[1]), ("mins", 16, words[1])])
    arrays = [Array(f"{owner}::{v}", v, _bytes(b, [e.tiles, n]), b, [e.tiles, n]) for v, b, n in shapes]
    return _laid_out(arrays, pragmas, {}, e.tier)


def _local(function: str, var: str, bits: int, dims: list, pragmas: list[Pragma], env: dict,
           instances: int = 1) -> Array:
    a = Array(f"{function}<...>::{var}" if env is not None else f"{function}::{var}", var,
              instances * _bytes(bits, dims), bits, list(dims), instances)
    return apply_layout(a, local_pragmas(function, a, pragmas, env or {}), strict=False)


def engine_locals(config: ModelConfig, e: EngineConfig, lins, pragmas: list[Pragma], ports: int,
                  sum_sets: int = 1, tokens: int = 1, *, ddr_banks: tuple[int, int] = (1, 1),
                  banks: int = 1) -> list[Array]:
    """The local arrays of one engine's kernel instances (gemv_unit, the tiles or the DDR stream: its accumulators a
    row of `ports`, the board's weight ports, and its sums `sum_sets` sets of them when the stream writes a round's
    outputs during the next round, 2, else a register (1)), each one RTL instance, sized by the largest of the
    tensors it serves (their linears, `lins`); the candidates and sums a row per token lane, an on-chip engine's
    accumulators a row per slot (token lane and bank: `banks`, 2 for the two-bank engine); a DDR stream's
    accumulators banked
    by its chunk's lanes and its row exponents by EX_BANKS (`ddr_banks`: brom_ddr.h's LANES and EX_BANKS)."""
    shapes = [lin_shape(config, lin) for lin in set(lins)]
    rows, cols = max(r // e.tensor_tiles(r, ports) for r, _ in shapes), max(c for _, c in shapes)
    ng, g = cols // e.group, e.group
    # template parameters and static local constants the pragmas may name
    tpl = {"GROUP": g, "BITS": e.bits, "TILES": e.tiles, "PORTS": ports}
    out = [_local("gemv_unit", "xs", 32, [ng], pragmas, {})]
    if e.tier == "ddr":
        q8 = e.scales == "q8"
        tpl = {**tpl, "LANES": ddr_banks[0], "EX_BANKS": ddr_banks[1]}
        out += [_local("brom_ddr_gemv_rt", "cand", 16, [tokens, ng, g // 4, 16], pragmas, tpl),
                _local("brom_ddr_gemv_rt", "xg", 8, [tokens, ng, g], pragmas, tpl),
                _local("brom_ddr_gemv_rt", "xsum", 32, [tokens, ng], pragmas, tpl),
                _local("brom_ddr_gemv_rt", "acc", 32, [tokens, ports, rows], pragmas, tpl),
                _local("brom_ddr_gemv_rt", "fin", 32, [tokens, sum_sets, ports, rows if sum_sets > 1 else 1],
                       pragmas, tpl),
                _local("brom_ddr_gemv_rt", "ex", 16, [ports, rows if q8 else 1], pragmas, tpl)]
    else:
        out += [_local("brom_gemv_banks_rt", "cand", 16, [tokens, ng, g // 4, 16], pragmas, tpl),
                _local("brom_gemv_banks_rt", "xg", 8, [tokens, ng, g], pragmas, tpl),
                _local("brom_gemv_banks_rt", "xsum", 32, [tokens, ng], pragmas, tpl),
                _local("brom_gemv_banks_rt", "acc", 32, [banks * tokens, e.tiles, rows], pragmas, tpl)]
    return out


def quantizers(groups: set, layer_groups: set, token_lanes: int, act_lanes: int) -> dict[int, int]:
    """roma_core.cpp's activation quantizers, as {the group that sizes them: instances}: quantize_block's for the
    groups of every GEMV (`groups`) and quantize_ahead's for the layers' (`layer_groups`), one per group and token
    lane where the layers use the group, else lane 0's only (the head's). A role's groups above the board's
    `act_lanes` share one quantizer per lane where it has several of them (quantize_wide: act_quant's three-loop form
    takes its group at run time), sized by the smallest."""
    out: dict[int, int] = {}
    for role in (groups, layer_groups):
        wide = sorted(g for g in role if g > act_lanes)
        shared = wide if len(wide) > 1 else []
        kinds = [[g] for g in sorted(role) if g not in shared] + ([shared] if shared else [])
        for kind in kinds:
            out[kind[0]] = out.get(kind[0], 0) + (token_lanes if set(kind) & layer_groups else 1)
    return out


def code_arrays(config: ModelConfig, pragmas: list[Pragma], token_lanes: int, groups: set, layer_groups: set,
                pair_codes: bool, act_lanes: int) -> list[Array]:
    """The GEMV inputs' activation codes (roma_core.cpp forward's q0, q1 [CODE_COLS] int8 and s0, s1 [CODE_COLS /
    smallest group] fp32, a row per token lane; pair_gemvs' uq, us where the FFN pair is two engines side by side,
    `pair_codes`) and the quantizers' locals (act_quant's amax_bits and inv [CODE_COLS / group] of each quantizer:
    `quantizers` of the GEMVs' `groups` and the layers' `layer_groups` at the board's `act_lanes`)."""
    cols = max(config.dim, config.ffn_dim)
    ng = cols // min(groups)
    out = [_local("forward", var, bits, [token_lanes, n], pragmas, None)
           for var, bits, n in (("q0", 8, cols), ("q1", 8, cols), ("s0", 32, ng), ("s1", 32, ng))]
    if pair_codes:
        out += [_local("pair_gemvs", "uq", 8, [token_lanes, cols], pragmas, {}),
                _local("pair_gemvs", "us", 32, [token_lanes, ng], pragmas, {})]
    for g, n in sorted(quantizers(groups, layer_groups, token_lanes, act_lanes).items()):
        out += [_local("act_quant", var, 32, [cols // g], pragmas, {"COLS": cols, "GROUP": g}, n)
                for var in ("amax_bits", "inv")]
    return out


def logits_impl(board_uram: int) -> str:
    """The memory g_logits binds to (roma_model.h's ROMA_LOGITS_IMPL): URAM where the board has it (the whole
    vocabulary's fp32 logits are a deep, narrow array: 48 BRAM36 of SmolLM2's, or 12 URAM)."""
    return "uram" if board_uram > 0 else "bram"


# A DDR-streamed tensor's rows per round at most: brom_ddr_gemv keeps an fp32 accumulator per row of each weight
# port's tile, so the vocabulary-wide lm head is cut into tiles (streamed a round of one tile per port after
# another, the same words and cycles) to keep those accumulators at 8K rows in all (8 BRAM36 instead of 48 for
# SmolLM2's 49,152).
DDR_TILE_MAX_ROWS = 8192


def ddr_tiles(rows: int, ports: int) -> int:
    """Tiles of a DDR-streamed tensor of `rows` outputs read through `ports` weight ports: the fewest multiple of
    `ports` that divides rows into tiles whose `ports` accumulators hold DDR_TILE_MAX_ROWS rows or fewer, so that
    every port streams a tile in every round; else (no multiple of `ports` divides rows) the fewest tiles of
    DDR_TILE_MAX_ROWS rows or fewer, the last round leaving ports idle."""
    fits = [t for t in range(1, rows + 1) if rows % t == 0 and rows // t <= DDR_TILE_MAX_ROWS]
    return next((t for t in fits if t % ports == 0 and rows // t * ports <= DDR_TILE_MAX_ROWS), fits[0])


def with_impl(applied: list, impl: str) -> list:
    """The pragmas with their BIND_STORAGE's impl set to `impl` (a build macro the plan chooses)."""
    return [((Pragma(p.directive, p.variable, p.function, {**p.options, "impl": impl}, p.where), lead, env)
             if p.directive == "BIND_STORAGE" else (p, lead, env)) for p, lead, env in applied]


def core_arrays(config: ModelConfig, context: int, kv_tokens: int, pragmas: list[Pragma], hw: dict,
                kv_port_bits: int, logits: str = "bram", token_lanes: int = 1, kv_ports: int = 1,
                pv_sets: int = 1, *, chunk: int) -> list[Array]:
    """The arrays the top declares once whatever the placement: norms, chunk activations (`chunk` rows: the board's
    prefill_chunk, roma_model.h PREFILL_CHUNK), logits (in `logits` memory, logits_impl), attention's scores, the
    sampler's ring, and the one layer()'s (a row per token lane: the board's token_lanes), forward()'s and
    attention's locals (attention's lanes: a KV port's over the build's kv_ports, roma_core.cpp ATT_SIMD; its
    partial sums by the board's KV sets too, roma_core.cpp PV_SETS)."""
    c = model_consts(config, kv_port_bits)
    t, d, kv, f = chunk, config.dim, config.kv_dim, config.ffn_dim
    qdim, hd = config.n_heads * config.head_dim, config.head_dim
    max_ctx = kv_tokens if kv_tokens else context
    static = [Array("g_norms", "g_norms", _bytes(32, [2 * config.n_layers + 1, d]), 32, [2 * config.n_layers + 1, d])]
    for name, n in (("g_x", d), ("g_q", qdim), ("g_k", kv), ("g_v", kv)):
        static.append(Array(name, name, _bytes(32, [t, n]), 32, [t, n]))
    static += [Array("g_logits", "g_logits", _bytes(32, [config.vocab_size]), 32, [config.vocab_size]),
               Array("attention_lanes<...>::score", "score", _bytes(32, [token_lanes, config.n_heads, max_ctx]), 32,
                     [token_lanes, config.n_heads, max_ctx]),
               Array("g_recent.id", "id", _bytes(32, [hw["SAMPLER_RING"]]), 32, [hw["SAMPLER_RING"]])]
    for a in static:
        applied = static_pragmas(a, pragmas, {}, c)
        apply_layout(a, with_impl(applied, logits) if a.name == "g_logits" else applied)
    simd = port_lanes(hd, kv_port_bits) * kv_ports
    att = {"HEADS": config.n_heads, "KV_HEADS": config.n_kv_heads, "HD": hd, "MAX_CTX": max_ctx, "SIMD": simd,
           "GROUP": config.n_heads // config.n_kv_heads}
    # two of each, one per block of a pair (one written beside the units that read the other): the GEMV inputs h,
    # q/k/v's outputs qr, kr, vr, the attention outputs att and the FFN's gate and up; then the FFN step's own
    local = [_local("layer", f"{v}{i}", 32, [token_lanes, n], pragmas, None) for v, n in
             (("h", d), ("qr", qdim), ("kr", kv), ("vr", kv), ("att", qdim), ("gate", f), ("up", f)) for i in (0, 1)]
    local += [_local("ffn_step", v, 32, [token_lanes, d], pragmas, None) for v in ("o_f", "o_b")]
    local += [_local("forward", "h", 32, [d], pragmas, None),
              _local("forward", "rope_cos", 32, [t, hd // 2], pragmas, None),
              _local("forward", "rope_sin", 32, [t, hd // 2], pragmas, None),
              _local("attention_lanes", "ql", 32, [token_lanes, config.n_heads, hd], pragmas, att),
              _local("attention_lanes", "acc", 32, [token_lanes, pv_partials(kv, simd, pv_sets), config.n_heads, hd],
                     pragmas, att)]
    return static + local


def lora_arrays(config: ModelConfig, slots: int, rank: int, targets, dtype: str, impl: str) -> list[Array]:
    """The LoRA unit's arrays as lora_unit.h declares them, with roma_core's pragmas on them (ROMA_LORA_IMPL =
    `impl`): values [S][SLOT_VALUES] (fp16, or int8 codes) reshaped to 64-bit words, int8's fp32 row scales
    [S][rows] reshaped to 64-bit words; per (slot, layer, target) rank (16 bits) and scale (fp32) in LUTRAM, and
    per slot loaded. No unit (no arrays) without slots or rank."""
    if slots <= 0 or rank <= 0 or not targets:
        return []
    where = "roma_core.cpp (the LoRA unit's pragmas)"
    idx = [LINEARS.index(t) for t in targets]
    shapes = [lin_shape(config, i) for i in idx]
    n = config.n_layers
    values = n * sum(rank * (cols + rows) for rows, cols in shapes)
    bits = 16 if dtype == "fp16" else 8
    out = [apply_layout(Array("g_lora.values", "values", _bytes(bits, [slots, values]), bits, [slots, values]),
                        [(contract_pragma("BIND_STORAGE", "values", where, type="ram_s2p", impl=impl), 0, {}),
                         (contract_pragma("ARRAY_RESHAPE", "values", where, type="cyclic", factor=64 // bits, dim=2),
                          0, {})])]
    if dtype == "int8":
        rows = n * sum(rank + r for r, _ in shapes)
        out.append(apply_layout(
            Array("g_lora.row_scale", "row_scale", _bytes(32, [slots, rows]), 32, [slots, rows]),
            [(contract_pragma("BIND_STORAGE", "row_scale", where, type="ram_s2p", impl=impl), 0, {}),
             (contract_pragma("ARRAY_RESHAPE", "row_scale", where, type="cyclic", factor=2, dim=2), 0, {})]))
    for var, b in (("rank", 16), ("scale", 32)):
        dims = [slots, n, len(idx)]
        out.append(apply_layout(Array(f"g_lora.{var}", var, _bytes(b, dims), b, dims),
                                [(contract_pragma("BIND_STORAGE", var, where, type="ram_1p", impl="lutram"), 0, {})]))
    out.append(apply_layout(Array("g_lora.loaded", "loaded", _bytes(8, [slots]), 8, [slots]), []))
    return out


def lora_apply_locals(rank: int) -> list[Array]:
    """The one lora_apply's local A x [rank] fp32 (no pragma on it; none without a LoRA unit)."""
    return [_local("lora_apply", "t", 32, [rank], [], {})] if rank > 0 else []


def kv_array(config: ModelConfig, tokens: int, impl: str, pragmas: list[Pragma], kv_port_bits: int) -> list[Array]:
    """g_kv_chip [N_LAYERS][2][tokens * KV_DIM] fp16 by its pragmas (impl: ROMA_KV_ONCHIP_IMPL); none without."""
    if not tokens:
        return []
    dims = [config.n_layers, 2, tokens * config.kv_dim]
    a = Array("g_kv_chip", "g_kv_chip", _bytes(16, dims), 16, dims)
    # the build's macro: where the plan reserved the array
    return [apply_layout(a, with_impl(static_pragmas(a, pragmas, {}, model_consts(config, kv_port_bits)), impl))]


def total(arrays: list[Array]) -> tuple[float, float]:
    """(BRAM36, URAM) of a list of laid-out arrays."""
    return sum(a.bram36 for a in arrays), sum(a.uram for a in arrays)
