"""The logic model of the synthesized top: LUT, FF and DSP per unit by explicit formulas, labelled estimates.

No AMD tool runs here, so these are formulas, not reports. They follow FINN's MVAU estimates (finn
custom_op/fpgadataflow matrixvectoractivation: LUTs from lanes x weight and activation bits, DSPs from lanes x
ceil((W + A) / 48)) for the integer datapath, and count the fp32 operators the kernels' pipelined loops
unroll, at a fixed cost per operator. Nothing calibrates them against Vivado yet: each unit reports its inputs so
that a synthesis report can replace a constant.

Units and their counts are the RTL instances the HLS makes for the plan (one per call site of a non-inlined
function, memory.py's engines): each GEMV engine (one per configuration, shared by the layers and linears of that
configuration; plan.py's engines) with its tiles (parallel datapaths on chip; a DDR engine streams a tile per
weight port at once); the activation quantizers; with a LoRA unit, one lora_apply (linear() calls it at one place for
every linear); per token lane (the board's token_lanes) one attention, one RoPE, one SwiGLU, one RMSNorm (lane 0's
also the final norm's) and two residual adds; one sampler for its two call sites in roma_core (ALLOCATION limits). An engine of 8-bit codes or more
(types.h DSP_MAC_MIN_BITS) is a DspMac one whatever the build's datapath (engine_datapath; roma_core.cpp Unit::DP).

GEMV tile (brom_tile_gemv / brom_ddr_gemv; one (group, row) step per cycle: FINN's PE = 1, SIMD Q = GROUP,
weight bits W = BITS, activation bits A = 8):
  LutSelect:  S = W * Q / 4 selections per step, each a 16:1 mux of a C = A + 2-bit candidate (a subset sum of
              4 int8): select LUTs = 4 * C * S (4 LUT6 per bit of a 16:1 mux); adder tree C * (2S - 1) (FINN's
              (W + A) * (2Q - 1) with the selections as operands); accumulator: acc_bits = ceil(log2 Q) + W + A
              (FINN's bound). LUT = c0 + c1 * (select + tree + acc), c0 = 300, c1 = 1.1 (FINN's constants). DSP 0.
  DspMac:     DSP = Q * ceil((W + A) / 48) (FINN's formula; BIND_OP impl = dsp on the product); LUT = c0 + c1 *
              ((W + A) * (2Q - 1) + acc_bits + Q * W) (adder tree, accumulator, code reassembly from planes).
  fp32 scale path per step (brom_term, q8/fp16 decode): 2 int->fp32, 2 fp16->fp32, 3 fmul, 2 fadd.
  FF: FINN has no FF formula; the integer datapath's registers are counted as its tree and accumulator bits
  (c1 * (tree + acc)), and each fp operator's pipeline registers (FP_OPS).
Candidate stage (brom_candidates, once per engine and token lane: its PEs share the candidates), CQ = A_e / 4 quads
  per cycle, A_e the engine's activation lanes (boards.json act_lanes, at most its group: Board.engine_act_lanes):
  LutSelect 11 adders of C bits per quad (its 16 subset sums), registered (16 * C FF per quad); both datapaths the
  group sum, 4 * CQ activations of C bits added per cycle. LUT = c1 * (CQ * 11 * C + 4 * CQ * C).
A DDR engine's chunk loop (brom_ddr_gemv_rt) unrolls a chunk's LANES steps of each token lane at the chunk II
  (ddr_stream: brom_ddr.h DdrStream at the board's weight_port_bits); its datapaths are the lanes the II leaves
  unshared, ceil(LANES * token lanes / II) per weight port (a tile streams through each at once): 1 at a 128-bit
  port with one token lane, 4 per lane for 2-bit G64 (a 512-bit port word holds 4 steps' planes).
Token lanes (boards.json token_lanes; roma_core.cpp Unit::TOKENS, one for a head engine): a layers' engine's
  datapaths and candidate stages once per lane (a block of prefill tokens per pass over the
  weights, the lanes side by side). An on-chip one's row split (decode: lane 1 takes the odd rows of token 0) adds
  2:1 muxes: a group's candidates (16 C bits per quad; DspMac: the group's 8-bit
  activations), its scale and sum (64 bits), and each PE's fp32 output into y0 (32 bits per tile).
Two banks (roma_core.cpp TWO_BANKS: the FFN pair's BRAM-ROM and URAM engines as one, brom_gemv_banks_rt): the two
  engines' datapaths, one candidate stage per token lane for both, the row split's two
  activation-side muxes, and per slot (bank and token lane) and PE a 4:1 select of the step's WPS words and its
  decoded scale and minimum among the banks' ports (32 * WPS + 32 LUTs) and of its output between y and z (32).
Activation quantizer (act_quant, SIMD = A_g, the board's act lanes at most group g): roma_core's two, quantize_block
  (right before the GEMV that reads its codes) and quantize_ahead (beside the GEMV before it), each one per token lane
  and group its GEMVs use (quantize_ahead the layers' groups only; the groups above the lanes share one where there
  are several, memory.quantizers); per lane an integer compare of 31 bits, an fmul
  and a round/clip of 8 bits; 2 fdiv (the scale and its inverse).
LoRA apply (lora_apply, scalar): fp16->fp32, 2 fmul and 1 fadd in each of its two loops, then 1 fmul and 1 fadd.
Attention (attention_lanes, a datapath per token lane; GROUP = HEADS / KV_HEADS query heads per KV head, SIMD =
  ATT_SIMD, the board's KV port in fp16 lanes): scores GROUP * SIMD fmul, GROUP * (SIMD - 1) + GROUP * (HD / SIMD - 1) fadd (the two
  trees), GROUP fmul (the scale) and GROUP fcmp (the max); P x V GROUP exp with their GROUP fadd (score - max)
  and GROUP fadd (the sums), GROUP * SIMD fmul and fadd; 2 * SIMD fp16->fp32; SIMD fdiv (the output), after
  (P - 1) * (SIMD + 1) fadd adding PV's P partial sums (memory.pv_partials; 1 where a row is FADD_LATENCY chunks,
  times the KV sets). With two KV sets a lane reads its set's chunk: the same converters per lane.
The elementwise units at the build's lanes L (boards.json elementwise_lanes, halved to the model's dimensions):
RMSNorm: L fmul + L fadd (the squares and their partial sums, norm.h), 1 fsqrt + 1 fdiv, 2 L fmul (x * inv * w).
RoPE: L pairs: 4 fmul + 2 fadd each, per token lane; its angles (once per position for every layer, in forward):
  sin and cos of one angle per cycle (1 fmul).
SwiGLU: per lane 1 exp, 1 fadd, 1 fdiv, 1 fmul.
Residual add (two call sites in the layer: two instances): L fadd.
Sampler (sampler.h; L lanes, the board's sampler_lanes, roma_model.h SAMPLER_LANES; roma_core.h's pool K and ring
  N): per lane a sorted register list of K (key, id) pairs and its insertion network (insert<K>: per entry a 32-bit
  key compare, a key equality and an id compare for the ties, and a 3:1 mux of the bits it keeps), N id
  comparators against the ring of recent ids and the penalty's fmul; with L > 1 MERGE's insertion into lane 0's list
  is a network of its own. An n-bit magnitude compare is n/2 LUTs (a LUT6 per two bits on the carry chain), an
  equality n/3, a 3:1 mux of one bit one LUT6 (sampler_entry); the ids are 16 bits where the vocabulary is below
  65,535 (sampler.h Id), else 32, and the list holds the key and id bits in FF. Where the board's
  argmax_lanes A are more than L (roma_model.h ARGMAX_LANES), ARGMAX's lanes: each one entry (the best so far), N
  ring comparators and an fmul, and its A - 1 merges one entry's network. Beside them 1 exp, 1 fmul and 1 fdiv
  (PROBS, the pick) and 4 fcmp.
exp (fexp.h): 12 fmul, 11 fadd and two int/fp conversions.
LUTRAM: each LUTRAM array of memory.py costs banks * width * ceil(depth / 64) LUTs (FINN's distributed-memory
  term, 64-deep LUTRAM).
Operator costs FP_OPS (UltraScale+, Vitis HLS defaults for fp32 with DSPs: fmul 3 DSP, fadd 2 DSP; the LUT/FF
figures are the order of the Floating-Point Operator core's tables): assumptions, not measurements.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from ...artifact.boards import Board
from ...artifact.ddr_image import ddr_param_words, ddr_step_words
from ...artifact.interface import kernel_constants, load_constants
from ...artifact.kv_layout import KvLayout, board_sets
from ...model.config import ModelConfig
from .memory import LINEARS, lin_shape, pv_partials, quantizers as quantizer_counts

LABEL = "estimate (FINN MVAU-style formulas and fixed fp32 operator costs; not a synthesis report)"


@dataclass(frozen=True)
class DdrStream:
    """brom_ddr.h's DdrStream for one engine through one weight port: a chunk's steps (lanes), the chunk loop's II,
    the chunks and the steps of a block, and a chunk's words."""
    lanes: int
    ii: int
    block_chunks: int
    block_steps: int
    chunk_words: int

    @property
    def ex_banks(self) -> int:
        """The banks of a q8 tile's row exponents (EX_BANKS: two chunks' rows, one per bank)."""
        return 2 * self.chunk_words

    @property
    def y_after(self) -> bool:
        """The lanes outrun y's one write port: a round's outputs go out during the next round (two sets of sums)."""
        return self.ii < self.lanes


def ddr_stream(bits: int, group: int, scales: str, tile_rows: list[int], port_bits: int) -> DdrStream:
    """The DDR stream (brom_ddr.h DdrStream: LANES, chunk_ii, BLOCK_CHUNKS) of an engine whose tiles have these row
    counts, through a port_bits-wide weight port."""
    ddr, types = kernel_constants("brom_ddr.h"), kernel_constants("types.h")
    steps, port = ddr["DDR_BLOCK_STEPS"], port_bits // 32
    step_words, param_words = ddr_step_words(bits, group), ddr_param_words(bits, group, scales)
    chunk = max(port, step_words)
    lanes, chunk_cycles = chunk // step_words, chunk // port
    rows, fadd = min(tile_rows), types["FADD_LATENCY"]
    if math.gcd(*tile_rows) % lanes == 0:  # lanes: an accumulator comes back every rows / LANES iterations
        ii = max(chunk_cycles, -(-fadd // max(1, rows // lanes)))
    else:  # serial: one step per GEMV_II
        ii = max(lanes * -(-fadd // rows), chunk_cycles)
    return DdrStream(lanes, ii, (param_words + steps * step_words) // chunk, steps, chunk)

# FINN's MVAU LUT constants (finn-r: c0 fixed cost, c1 routing/packing factor)
C0, C1 = 300, 1.1
ACT_BITS = 8
# per fp32 operator: LUT, FF, DSP (assumed, see the docstring)
FP_OPS = {
    "fmul": (80, 150, 3), "fadd": (200, 300, 2), "fdiv": (800, 1400, 0), "fsqrt": (500, 800, 0),
    "fcmp": (40, 10, 0), "itof": (150, 200, 0), "ftoi": (150, 200, 0), "h2f": (40, 30, 0),
    "sin": (2500, 3000, 12), "cos": (2500, 3000, 12),
}
EXP_OPS = {"fmul": 12, "fadd": 11, "itof": 1, "ftoi": 1}


def sampler_entry(id_bits: int) -> tuple[int, int, int]:
    """The LUTs and FF of one entry of the sampler's lists (see the docstring): key > (16) and == (11), id <
    (id_bits / 2), a mux of its key and id bits; and the LUTs of one ring comparator, an id equality and its
    active-entry AND."""
    return 16 + 11 + id_bits // 2 + 32 + id_bits, 32 + id_bits, -(-id_bits // 3) + 1


def _ops(ops: dict) -> tuple[float, float, float]:
    lut = ff = dsp = 0.0
    for op, n in ops.items():
        if op == "exp":
            e = _ops(EXP_OPS)
            lut, ff, dsp = lut + n * e[0], ff + n * e[1], dsp + n * e[2]
            continue
        a, b, c = FP_OPS[op]
        lut, ff, dsp = lut + n * a, ff + n * b, dsp + n * c
    return lut, ff, dsp


def _unit(name: str, count: int, lut: float, ff: float, dsp: float, inputs: dict) -> dict:
    return {"unit": name, "count": count, "lut": round(count * lut), "ff": round(count * ff),
            "dsp": round(count * dsp), "per_instance": {"lut": round(lut), "ff": round(ff), "dsp": round(dsp)},
            "inputs": inputs}


def engine_datapath(bits: int, datapath: str) -> str:
    """The integer datapath of an engine of `bits`-bit codes in a build of `datapath` (roma_core.cpp Unit::DP):
    DspMac from types.h DSP_MAC_MIN_BITS up."""
    return "DspMac" if bits >= kernel_constants("types.h")["DSP_MAC_MIN_BITS"] else datapath


def gemv_tile(bits: int, group: int, datapath: str = "LutSelect") -> tuple[float, float, float, dict]:
    """(LUT, FF, DSP, inputs) of one GEMV tile (see the docstring)."""
    w, a, q = bits, ACT_BITS, group
    acc = math.ceil(math.log2(q)) + w + a
    if datapath == "LutSelect":
        c = a + 2
        s = w * q // 4
        select, tree = 4 * c * s, c * (2 * s - 1)
        lut_int = C0 + C1 * (select + tree + acc)
        ff_int = C1 * (tree + acc)
        dsp_int = 0
        inputs = {"datapath": datapath, "W": w, "A": a, "Q": q, "selections": s, "candidate_bits": c,
                  "acc_bits": acc}
    else:
        tree = (w + a) * (2 * q - 1)
        lut_int = C0 + C1 * (tree + acc + q * w)
        ff_int = C1 * (tree + acc)
        dsp_int = q * math.ceil((w + a) / 48)
        inputs = {"datapath": datapath, "W": w, "A": a, "Q": q, "acc_bits": acc}
    fl, ff, fd = _ops({"itof": 2, "h2f": 2, "fmul": 3, "fadd": 2})
    return lut_int + fl, ff_int + ff, dsp_int + fd, inputs


def candidate_stage(lanes: int, datapath: str = "LutSelect") -> tuple[float, float, float, dict]:
    """(LUT, FF, DSP, inputs) of the candidate stage of an engine taking `lanes` activations a cycle (see the
    docstring)."""
    cq, c = lanes // 4, ACT_BITS + 2
    cand = 11 * c * cq if datapath == "LutSelect" else 0
    return C1 * (cand + 4 * cq * c), (16 * c * cq if datapath == "LutSelect" else 0) + 4 * cq * c, 0, \
        {"quads_per_cycle": cq, "candidate_bits": c}


def act_quantizer(lanes: int) -> tuple[float, float, float]:
    """(LUT, FF, DSP) of one activation quantizer of `lanes` lanes (see the docstring)."""
    lut, ff, dsp = _ops({"fdiv": 2, "fmul": lanes})
    return lut + lanes * (31 + 50), ff + lanes * 40, dsp


def sampler_inputs(config: ModelConfig, board: Board) -> dict:
    """The build's sampler instance: its lanes (roma_model.h SAMPLER_LANES), pool and ring (roma_core.h)."""
    core = load_constants()
    return {"lanes": board.model_sampler_lanes(config.vocab_size), "pool": core["SAMPLER_K"],
            "ring": core["SAMPLER_RING"], "argmax_lanes": board.model_argmax_lanes(config.vocab_size),
            "vocab": config.vocab_size}


def sampler(inputs: dict) -> tuple[float, float, float]:
    """(LUT, FF, DSP) of the sampler (see the docstring): its lanes' insertion networks and ring comparators, MERGE's
    network, and its fp operators."""
    lanes, pool, ring = inputs["lanes"], inputs["pool"], inputs["ring"]
    argmax = inputs["argmax_lanes"] if inputs["argmax_lanes"] > lanes else 0
    entries = (lanes + (1 if lanes > 1 else 0)) * pool + (argmax + 1 if argmax else 0)
    fp = _ops({"fcmp": 4, "exp": 1, "fmul": 1 + lanes + argmax, "fdiv": 1})  # a penalty multiplier per lane
    entry_lut, entry_ff, ring_lut = sampler_entry(16 if inputs["vocab"] < 0xFFFF else 32)  # sampler.h Id
    lut = C1 * (entries * entry_lut + (lanes + argmax) * ring * ring_lut)
    return fp[0] + lut, fp[1] + entries * entry_ff, fp[2]


def estimate(config: ModelConfig, board: Board, engines: list[dict], *, lora: dict, kv_tokens: int,
             context: int, arrays: list, datapath: str = "LutSelect") -> dict:
    """LUT/FF/DSP per unit and in total against the board (see the module docstring)."""
    units = []
    lora_unit = lora.get("slots", 0) > 0
    for e in engines:
        if not e["gemv"]:
            continue
        shapes = [lin_shape(config, LINEARS.index(lin)) for lin in e["linears"]]
        lut, ff, dsp, inputs = gemv_tile(e["bits"], e["group"], engine_datapath(e["bits"], datapath))
        name = f"GEMV engine #{e['index']} {e['role']} ({e['bits']}-bit G{e['group']} {e['scales']}, {e['tier']})"
        # an on-chip engine's tiles are parallel datapaths (brom_gemv_banks_rt unrolls them); a DDR engine streams
        # a tile per weight port at once through brom_ddr_gemv_rt's lanes, as many per port as its chunk II leaves
        # unshared
        tokens = e["token_lanes"]
        datapaths, ddr = e["tiles"] * tokens, {}  # a datapath per PE and token lane
        if e["tier"] == "ddr":  # a chunk's steps of every token lane, shared over the chunk II
            s = ddr_stream(e["bits"], e["group"], e["scales"], e["tile_rows"], board.weight_port_bits)
            ports = min(board.weight_ports, e["tiles"])
            datapaths, ddr = ports * -(-s.lanes * tokens // s.ii), {"chunk_lanes": s.lanes, "chunk_ii": s.ii,
                                                                    "ports": ports,
                                                                    "weight_port_bits": board.weight_port_bits}
        units.append(_unit(name, datapaths, lut, ff, dsp, {**inputs, "max_rows": max(r for r, _ in shapes),
                                                           "max_cols": max(c for _, c in shapes),
                                                           "tiles": e["tiles"], "token_lanes": tokens,
                                                           "linears": e["linears"], **ddr}))
    # decode's row split (brom_gemv_banks_rt) on an on-chip engine with token lanes: lane 1 takes token 0's activation
    # side (2:1 muxes on a group's candidates or activations, and on its scale and sum) and writes y0's odd rows
    # (a 2:1 mux on each PE's fp32 output into its second bank). The two-bank engine (roma_core.cpp TWO_BANKS: the FFN
    # pair's ROM and URAM engines as one) has the same two muxes of the activation side, and each slot of each PE
    # selects its step's words and decoded scale and minimum among its banks' ports (a 4:1 mux a bit) and its output
    # between y and z.
    for e in engines:
        if not (e["gemv"] and e["tier"] != "ddr" and e["token_lanes"] >= 2):
            continue
        dp, c = engine_datapath(e["bits"], datapath), ACT_BITS + 2
        side = (e["group"] // 4) * 16 * c if dp == "LutSelect" else e["group"] * ACT_BITS
        if e.get("two_banks_with") is None:
            units.append(_unit(f"row split of engine #{e['index']} (decode on two token lanes)", 1,
                               side + 64 + 32 * e["tiles"], 0, 0, {"datapath": dp, "tiles": e["tiles"]}))
        elif e["tier"] == "uram":
            slots, words = 2 * e["token_lanes"], e["bits"] * e["group"] // 32
            units.append(_unit(f"two banks of engines #{e['index']} and #{e['two_banks_with']} (slot selects)", 1,
                               2 * (side + 64) + slots * e["tiles"] * (32 * words + 32 + 32), 0, 0,
                               {"datapath": dp, "tiles": e["tiles"], "slots": slots, "words_per_step": words}))
    # an engine's activation lanes: the board's, at most its group; the two-bank engine's once (its URAM engine's)
    gemv = [e for e in engines if e["gemv"] and not (e.get("two_banks_with") is not None and e["tier"] == "rom")]
    # the quantizers: quantize_block's per group of every GEMV, quantize_ahead's per group of the layers', each per
    # token lane of the layers' engines (a group of the head's only: one lane, in quantize_block); a role's groups
    # above the board's lanes share one (memory.quantizers)
    token_lanes = max((e["token_lanes"] for e in gemv), default=1)
    layer_groups = {e["group"] for e in gemv if e["role"] == "layers"}
    quantizers = Counter()
    for g, n in quantizer_counts({e["group"] for e in gemv}, layer_groups, token_lanes, board.act_lanes).items():
        quantizers[board.engine_act_lanes(g)] += n
    for lanes, n in sorted(quantizers.items()):
        units.append(_unit(f"activation quantizer of {lanes} lanes (before and beside a GEMV, per group and token "
                           f"lane)", n, *act_quantizer(lanes), {"simd": lanes, "quantizers": n}))
    stages = Counter()
    for e in gemv:
        stages[engine_datapath(e["bits"], datapath), board.engine_act_lanes(e["group"])] += e["token_lanes"]
    for (dp, lanes), n in sorted(stages.items()):
        cl, cf, cd, cin = candidate_stage(lanes, dp)
        units.append(_unit(f"candidate stage of {lanes} lanes (one per {dp} engine and token lane)", n, cl, cf, cd,
                           {**cin, "stages": n}))
    if lora_unit:
        lo = _ops({"h2f": 2, "fmul": 5, "fadd": 3})
        units.append(_unit("LoRA apply (one, every linear)", 1, *lo,
                           {"lanes": 1, "dtype": lora.get("dtype"), "rank": lora.get("rank")}))
    group, hd = config.n_heads // config.n_kv_heads, config.head_dim
    simd = KvLayout.for_build(hd, board.kv_port_bits, board.kv_ports, kv_tokens).lanes
    partials = pv_partials(config.kv_dim, simd, board_sets(board.kv_ports))  # roma_core.cpp PV_SETS
    at = _ops({"fmul": 2 * group * simd + group, "fadd": group * (simd - 1) + group * (hd // simd - 1)
               + group * simd + 2 * group + (partials - 1) * (simd + 1), "exp": group, "fcmp": group,
               "h2f": 2 * simd, "fdiv": simd})
    units.append(_unit("attention (one per token lane)", board.token_lanes, *at,
                       {"group": group, "simd": simd, "head_dim": hd, "max_ctx": kv_tokens or context,
                        "pv_partials": partials}))
    ew = board.elementwise_lanes.for_model(config.dim, config.ffn_dim, config.head_dim)
    tt = board.token_lanes
    units.append(_unit("RMSNorm (one per token lane)", tt,
                       *_ops({"fmul": 3 * ew.norm, "fadd": ew.norm, "fsqrt": 1, "fdiv": 1}), {"simd": ew.norm}))
    units.append(_unit("RoPE angles (one, for every layer)", 1, *_ops({"sin": 1, "cos": 1, "fmul": 1}), {}))
    units.append(_unit("RoPE (one per token lane)", tt, *_ops({"fmul": 4 * ew.rope, "fadd": 2 * ew.rope}),
                       {"simd": ew.rope}))
    units.append(_unit("SwiGLU (one per token lane)", tt, *_ops({"exp": ew.swiglu, "fadd": ew.swiglu,
                                                                 "fdiv": ew.swiglu, "fmul": ew.swiglu}),
                       {"simd": ew.swiglu}))
    units.append(_unit("residual add (two per token lane)", 2 * tt, *_ops({"fadd": ew.residual}),
                       {"simd": ew.residual}))
    sampler_in = sampler_inputs(config, board)
    n, argmax = sampler_in["lanes"], sampler_in["argmax_lanes"]
    greedy = f", greedy tokens on {argmax}" if argmax > n else ""
    units.append(_unit(f"sampler of {n} lane{'s' * (n > 1)}{greedy} (one, two call sites)", 1, *sampler(sampler_in),
                       sampler_in))
    lutram = [a for a in arrays if a.impl == "lutram"]
    lut_mem = sum(a.instances * a.banks * a.width * math.ceil(a.depth / 64) for a in lutram)
    units.append(_unit("LUTRAM arrays", 1, lut_mem, 0, 0, {"arrays": len(lutram)}))
    tot = {k: sum(u[k] for u in units) for k in ("lut", "ff", "dsp")}
    avail = {"lut": board.luts, "ff": board.ff, "dsp": board.dsp}
    return {"label": LABEL, "units": units,
            "total": {k: {"used": tot[k], "available": avail[k]} for k in tot}}


def render(logic: dict) -> list[str]:
    """Text lines: the units and the totals against the board."""
    lines = [f"logic ({logic['label']}):"]
    for u in logic["units"]:
        lines.append(f"  {u['unit']:<52} x{u['count']:<3} LUT {u['lut']:>9,}  FF {u['ff']:>9,}  DSP {u['dsp']:>6,}")
    t = logic["total"]
    lines.append("  total" + " " * 53 + "  ".join(
        f"{k.upper()} {t[k]['used']:>9,} of {t[k]['available']:,} ({t[k]['used'] / t[k]['available']:.0%})"
        for k in ("lut", "ff", "dsp")))
    return lines
