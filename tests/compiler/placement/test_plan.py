"""The placement planner (roma_runtime.compiler.placement.plan), its board data and `roma plan`.

Plans need only shapes, so most tests plan from SmolLM2-135M's ModelConfig (no model load); the CLI tests load
the model once per subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from roma_runtime.compiler.placement import memory as M
from roma_runtime.compiler.placement import plan as P
from roma_runtime.artifact.boards import get_board, load_boards
from roma_runtime.artifact.model_header import ffn_pair
from roma_runtime.errors import RomaError
from roma_runtime.model.config import ModelConfig

HOST = Path(__file__).resolve().parents[3] / "host"


@pytest.fixture(scope="module")
def smollm2() -> ModelConfig:
    # SmolLM2-135M's shapes, as load_model("smollm2-135m").config reports them.
    return ModelConfig(name="SmolLM2-135M", n_layers=30, dim=576, ffn_dim=1536, n_heads=9, n_kv_heads=3,
                       vocab_size=49152, context_length=8192, rope_theta=100000.0, rms_eps=1e-5,
                       tied_embeddings=True)


@pytest.fixture(scope="module")
def smollm2_plan(smollm2):
    """P.make_plan(smollm2, board, **options), each set of options planned once per module: a SmolLM2 plan takes
    seconds, and several tests read the same ones (no test changes a plan)."""
    plans = {}

    def plan(board: str, **options) -> P.Plan:
        key = (board, repr(sorted(options.items())))
        if key not in plans:
            plans[key] = P.make_plan(smollm2, board, **options)
        return plans[key]

    return plan


def _check_invariants(plan: P.Plan) -> None:
    board = plan.board
    assert plan.total_bytes == sum(t.bytes for t in plan.tensors)
    assert plan.total_bytes == plan.on_chip_bytes + plan.ddr_bytes
    if not plan.over_budget:
        assert plan.bram36_used <= board.bram36 * plan.budget + 1e-9
        assert plan.uram_used <= board.uram * plan.budget + 1e-9
    # the resources are the arrays the top declares, laid out (memory.py): what the footprint check compares
    assert sum(a.bram36 for a in plan.arrays) == pytest.approx(plan.bram36_used)
    assert sum(a.uram for a in plan.arrays) == pytest.approx(plan.uram_used)
    for i in range(plan.model.n_layers):  # a layer is never split between chip and DDR (its norms stay on chip)
        tiers = {t.placement for t in plan.tensors if t.layer == i and t.kind != "norm"}
        assert tiers == {P.DDR_STREAM} or P.DDR_STREAM not in tiers, (i, tiers)
    for t in plan.tensors:
        if t.placement == P.DDR_STREAM:
            assert t.bram36 == 0 and t.uram == 0
        if t.placement == P.BRAM_ROM:
            assert t.uram == 0
        if t.kind == "norm":  # a row of g_norms, counted among the buffers
            assert t.placement == P.BRAM_ROM and t.bram36 == 0


# --- block counting --------------------------------------------------------------------------------------


def test_bram_counts_use_aspect_ratios_not_bytes():
    bram, uram = M.BRAM_SHAPES, M.URAM_SHAPES
    # 576 fp32 words: one 512x36 half plus a tail half = 1 tile; bytes alone would say 2304/4608 = 0.5.
    assert M.shape_cost(32, 576, bram) == 1.0
    # 512 x 72 bits fills one RAMB36 exactly; a 513th word needs two 36-bit RAMB18 halves beside it.
    assert M.shape_cost(72, 512, bram) == 1.0
    assert M.shape_cost(72, 513, bram) == 2.0
    assert M.shape_cost(36, 1025, bram) == 1.5
    # URAM is only 4K x 72: one word still costs a block, a 73-bit word two columns.
    assert M.shape_cost(8, 1, uram) == 1.0
    assert M.shape_cost(73, 4096, uram) == 2.0
    assert M.shape_cost(72, 4097, uram) == 2.0


def test_logic_follows_finns_mvau_formulas():
    from roma_runtime.compiler.placement import logic

    # DspMac: DSP = Q x ceil((W + A) / 48) per tile, plus the fp32 scale path's 3 fmul x 3 + 2 fadd x 2
    assert logic.gemv_tile(4, 32, "DspMac")[2] == 32 * 1 + 13
    # LutSelect: no DSP in the integer datapath; LUTs grow with the selections W x Q / 4
    lut2, _, dsp2, inputs = logic.gemv_tile(2, 64)
    lut8, _, _, _ = logic.gemv_tile(8, 64)
    assert dsp2 == 13 and inputs["selections"] == 32 and lut8 > 2.5 * lut2


def test_the_sampler_counts_a_sorted_list_per_lane(smollm2_plan):
    """sampler.h keeps the K best logits of each lane in registers, each entry with its comparators and its mux: about
    6K LUTs a lane with 16-bit ids, so the Zynq boards take one lane (four would be 30% of a KV260), the Alveo cards
    four, and 16 lanes of ARGMAX for greedy tokens (one entry and the ring's comparators each, under 1K LUTs)."""
    from roma_runtime.artifact.boards import get_board
    from roma_runtime.compiler.placement import logic

    def sampler(plan):
        (unit,) = [u for u in plan.logic["units"] if u["unit"].startswith("sampler")]
        return unit

    kv = smollm2_plan("kv260", bits=2, group=64, lora_rank=0)
    one, four = sampler(kv), sampler(smollm2_plan("u250", bits=2, group=64, lora_rank=0))
    assert one["inputs"]["lanes"] == 1 and four["inputs"]["lanes"] == 4 and one["unit"].startswith("sampler of 1 lane ")
    assert 10_000 < one["lut"] < 12_000 and one["inputs"]["argmax_lanes"] == 1
    assert four["inputs"]["argmax_lanes"] == 16
    argmax = four["lut"] - logic.sampler({**four["inputs"], "argmax_lanes": 4})[0]
    assert 34_000 < four["lut"] - argmax < 38_000 and 10_000 < argmax < 12_000
    assert logic.sampler({**one["inputs"], "lanes": 4})[0] > 0.3 * kv.board.luts
    # a vocabulary of 65,535 ids or more takes 32-bit ids: wider compares, muxes and ring comparators
    assert logic.sampler({**four["inputs"], "vocab": 128_256})[0] > 1.3 * four["lut"]
    assert kv.logic["total"]["lut"]["used"] < 0.9 * kv.board.luts
    # a vocabulary the lanes do not divide takes fewer (sampler.h streams whole rows of lanes)
    assert get_board("u250").model_sampler_lanes(49152) == 4 and get_board("u250").model_sampler_lanes(1002) == 2


def test_the_ddr_stream_reads_whole_port_words():
    """A DDR block is 32 steps: their scale entries, then their planes (brom_ddr.h), so a chunk loop at II 1 reads
    a port word a cycle: a 512-bit word holds a q8 block's 32 scale entries or four 2-bit G64 steps, 9 port words
    for 32 steps (8-step blocks of 36 words took 12); a 128-bit port one step a cycle, as before."""
    from roma_runtime.artifact.ddr_image import ddr_tile_words
    from roma_runtime.compiler.placement.logic import DdrStream, ddr_stream

    def stream(lanes, ii, chunks, chunk_words):
        return DdrStream(lanes=lanes, ii=ii, block_chunks=chunks, block_steps=32, chunk_words=chunk_words)

    assert ddr_stream(2, 64, "q8", [144, 48], 512) == stream(4, 1, 9, 16)
    assert ddr_stream(2, 64, "q8", [144], 128) == stream(1, 1, 36, 4)
    assert ddr_stream(2, 64, "fp16", [144], 512) == stream(4, 1, 10, 16)
    # 3-bit steps are padded to a power of two words (3 -> 4), 8-bit G128 steps are two 512-bit words each
    assert ddr_stream(3, 32, "q8", [144], 512) == stream(4, 1, 9, 16)
    assert ddr_stream(8, 128, "q8", [144], 512) == stream(1, 2, 33, 32)
    # rows that are not a multiple of the lanes: the steps one after another
    assert ddr_stream(2, 64, "q8", [6], 512).ii == 4 and ddr_stream(2, 64, "q8", [6], 512).y_after is False
    # a tile: the q8 row exponents in whole 16-word units, then whole blocks (144 rows x 9 groups: 41 blocks)
    assert ddr_tile_words(2, 64, 144, 576, "q8") == 80 + 41 * 144


# --- SmolLM2 on real boards ------------------------------------------------------------------------------


def test_u250_2bit_puts_the_layers_on_chip_and_q8_the_head_too(smollm2, smollm2_plan):
    plan = smollm2_plan("u250", bits=2, group=64, lora_rank=0)
    _check_invariants(plan)
    # the banks as the HLS lays them out (32-bit plane words in WPS banks, 16-bit scale arrays, one bank per
    # engine): all 30 layers fit, the 8-bit fp16 lm head (tied embedding) streams
    assert plan.layers_on_chip() == list(range(30)) and not plan.fits_on_chip
    assert plan.summary.endswith("lm head (tied embedding) from DDR")
    # 2 bits + 32/64 bits of scale and minimum per weight over 30 layers and the tied embedding.
    params = 30 * (2 * 576 * 576 + 2 * 192 * 576 + 3 * 576 * 1536)
    norms = (2 * 30 + 1) * 576 * 4
    assert plan.on_chip_bytes == params * 2.5 / 8 + norms
    # the layers take URAM too (engines of their own, contract C2), so the plan fills them "ffn-pair": each layer's
    # w_gate in BRAM (the only ROM), its other linears in URAM while it lasts, gate and up on two engines at once
    assert plan.fill == "ffn-pair" and plan.to_dict()["fill"] == "ffn-pair"
    assert plan.layer_placement(0) == "BRAM-ROM+URAM"
    assert plan.layer_placement(29) in (P.URAM_LOAD_ONCE, "BRAM-ROM+URAM")
    # one engine per configuration: the layers' ROM and URAM engines, each serving all seven linears, and the head's
    tiers = {(e["role"], e["tier"]): e for e in plan.engines}
    assert set(tiers) == {("layers", "rom"), ("layers", "uram"), ("token_embd", "ddr")}
    assert tiers["layers", "rom"]["linears"] == ["w_gate"]  # the gates in ROM, the rest (and a few gates) in URAM
    assert tiers["layers", "uram"]["linears"] == ["wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"]
    d = plan.to_dict()
    assert d["totals"]["weight_bytes"] == plan.total_bytes and d["memory"]["bram36"] == plan.bram36_used
    assert "estimate" in d["estimate"]["label"] and d["estimate"]["decode_tokens_per_s"] > 0
    # DDR weights stream through the four weight ports: 512 bits at 300 MHz (19.2 GB/s) each, the card's 77 at most
    m = d["estimate"]["model"]
    assert m["weight_port_bits"] == 512 and m["weight_ports"] == 4 and m["weight_stream_gbs"] == pytest.approx(76.8)
    # 2-bit codes with q8 scales and a 2-bit head: every layer on chip, BRAM-ROM + URAM-load-once; the head streams,
    # because a URAM bank takes the GEMV's partition over the plane words of a group (WPS banks of 4K words each)
    q8 = P.make_plan(smollm2, "u250", bits=2, group=64, lora_rank=0, scales="q8",
                     per_tensor_bits={"token_embedding": 2})
    _check_invariants(q8)
    assert not q8.over_budget and q8.layers_on_chip() == list(range(30))
    assert q8.layer_placement(29) in (P.URAM_LOAD_ONCE, "BRAM-ROM+URAM") and q8.uram_used > 0
    assert q8.logic_over == []  # a U250 has the LUTs and DSPs for its engines (estimate)


def test_the_u250_build_puts_each_layers_gate_and_up_on_two_engines(smollm2):
    # the headline build: 2-bit G64 q8 with a 2-bit head. The "layers" fill puts layers 0-6 in BRAM and 9-25 in URAM
    # (7-8 both), each layer's seven GEMVs on one engine; "ffn-pair" keeps the same 26 layers on chip, in less BRAM,
    # with 25 of them running gate and up at once
    kw = dict(bits=2, group=64, lora_rank=16, scales="q8", per_tensor_bits={"token_embedding": 2})
    plan = P.make_plan(smollm2, "u250", **kw)
    _check_invariants(plan)
    assert plan.fill == "ffn-pair" and plan.layers_on_chip() == list(range(26))
    assert "filled ffn-pair: each layer's w_gate in BRAM-ROM" in plan.render()
    where = {(t.layer, t.name.rsplit(".", 1)[-1]): t.placement for t in plan.tensors if t.layer is not None}
    paired = [i for i in range(26) if (where[i, "w_gate"], where[i, "w_up"]) == (P.BRAM_ROM, P.URAM_LOAD_ONCE)]
    assert len(paired) == 25
    assert {where[i, lin] for i in paired for lin in ("wq", "wk", "wv")} == {P.URAM_LOAD_ONCE}
    # ... chosen over the "layers" fill by the GEMV cycles of a token, the pair counted as the longer of the two
    core = P._Core(smollm2, plan.board, plan.budget, 1, 16, P.LINEAR, "fp16", None, plan.context, plan.pe)
    units = P.build_tensors(smollm2, 2, 64, plan.per_tensor_bits, "q8", plan.per_tensor_groups)
    cycles = {f: P._gemv_cycles(P._place(core, units, set(), set(), f)[0], plan.board) for f in P.FILLS}
    steps = 1536 * 576 / 64 / plan.pe / 2  # a gate's or an up's (group, row) steps per PE and token lane (row split)
    assert cycles["layers"] - cycles["ffn-pair"] == pytest.approx(25 * steps, rel=0.01)
    # decode's row split (brom_tile.h row_split): a token's rows over the engine's two token lanes where each lane's
    # accumulators come back no sooner than the loop's II allows; the head's engine has one lane
    assert plan.board.token_lanes == 2 and plan.pe == 32
    assert P.row_split(1, 2, 1536 // 32, 6) and P.row_split(1, 2, 576 // 32, 6)  # gate/up/down, q/o: 24 and 9 a lane
    assert not P.row_split(1, 2, 192 // 32, 6)  # k, v: 3 rows a lane, under the fp32 adder's 4 cycles
    assert not P.row_split(2, 2, 48, 6) and not P.row_split(1, 1, 48, 6) and not P.row_split(1, 2, 7, 1)
    assert P.row_split(1, 2, 4, 2) and not P.row_split(1, 2, 2, 2)  # II 2 engines: a lane's rows >= the engine's
    # ... and a block of two prefill tokens over the four slots of the engine of two banks (roma_core.cpp TWO_BANKS):
    # the ROM engine of the gates and the URAM one of the rest are one engine, one candidate stage a lane for both
    # (the logic estimate counts them once) and a select of each slot's bank and port
    assert P.row_split(2, 4, 576 // 32, 6) and not P.row_split(2, 4, 192 // 32, 6) and not P.row_split(3, 4, 48, 6)
    two = {(e["tier"], e["two_banks_with"]) for e in plan.engines if e["two_banks_with"] is not None}
    index = {e["tier"]: e["index"] for e in plan.engines if e["role"] == "layers" and e["tier"] != "ddr"}
    assert two == {("rom", index["uram"]), ("uram", index["rom"])}
    units = {u["unit"]: u for u in plan.logic["units"]}
    assert f"two banks of engines #{index['uram']} and #{index['rom']} (slot selects)" in units
    assert not any(name.startswith("row split") for name in units)
    quantizers = sum(u["count"] for name, u in units.items() if name.startswith("activation quantizer"))
    # the quantizers serve every engine: one right before a GEMV and one beside the GEMV before it, per group (64
    # only) and token lane
    assert quantizers == 2 * 2
    # the header names the pair: the ROM engine for the gates, the URAM one for the ups (numbered by first tensor)
    never = lambda e: False  # noqa: E731
    assert ffn_pair([("rom", "uram"), ("uram", "uram"), ("rom", "uram"), ("uram", "rom")], never) == ("rom", "uram")
    assert ffn_pair([("a", "b"), ("b", "a")], never) == ("a", "b") and ffn_pair([(0, 0), (1, 1)], never) is None
    # two DDR engines would share the weight ports: not a pair (the mixed build's streamed layers have some)
    ddr = {"ddr2", "ddr3"}.__contains__
    assert ffn_pair([("ddr2", "ddr3")] * 3 + [("rom", "uram")], ddr) == ("rom", "uram")
    assert ffn_pair([("ddr2", "ddr3")], ddr) is None and ffn_pair([("rom", "ddr3")], ddr) == ("rom", "ddr3")


def test_smollm2_rows_do_not_divide_into_groups_of_128(smollm2):
    # dim 576 = 4.5 x 128: G128 cannot hold SmolLM2's rows; the error names the groups that do.
    with pytest.raises(RomaError) as e:
        P.make_plan(smollm2, "u250", bits=2, group=128, lora_rank=0)
    assert "576" in str(e.value) and "32, 64" in str(e.value)


def test_kv260_cannot_hold_the_cores_own_arrays_at_8k(smollm2):
    plan = P.make_plan(smollm2, "kv260", bits=4, group=32, lora_rank=0, build_context=8192)
    _check_invariants(plan)
    layer_bytes = sum(t.bytes for t in plan.tensors if t.layer == 0)
    assert layer_bytes == 576 * (576 * 2 + 192 * 2 + 1536 * 3) * 5 // 8 + 2 * 576 * 4 == 2_216_448
    assert plan.bram36_budget == 115 and plan.uram_budget == 51
    # the top declares its buffers whatever the placement: the whole vocabulary's fp32 logits (12 URAM),
    # attention's scores over the 8K context (9 heads in 3 banks: 72), the norms (36), the DDR head's
    # accumulator (8K rows per tile: 9)... more than the KV260's budget, so nothing else fits and the plan says so
    arrays = {a.name: a for a in plan.arrays}
    assert arrays["g_logits"].uram == 12 and arrays["attention_lanes<...>::score"].bram36 == 72
    assert plan.layers_on_chip() == [] and plan.layers_streamed() == list(range(30))
    assert plan.over_budget == [f"BRAM36 {plan.bram36_used:,.1f} of 115.0"] and plan.bram36_used > 150
    assert "layers 0-29 stream from DDR" in plan.summary and "OVER BUDGET" in plan.summary
    assert plan.estimate["ddr_bytes_per_token"] > plan.total_bytes - 49152 * 576 * 5 // 8  # weights + lm head
    # at 2 bits layer 0 fits in URAM with one PE (with more the bank splits into PE x WPS banks, each taking whole
    # 4K-deep URAM blocks, and it would not); but the plan tries each PE count its logic allows and keeps the one
    # whose GEMVs take the fewest cycles, and four 128-bit weight ports stream layer 0 faster than one PE computes it
    one = P.make_plan(smollm2, "kv260", bits=2, group=64, lora_rank=0, build_context=8192, pe=1)
    assert one.layers_on_chip() == [0]
    assert P.make_plan(smollm2, "kv260", bits=2, group=64, lora_rank=0, build_context=8192, pe=4).layers_on_chip() == []
    two = P.make_plan(smollm2, "kv260", bits=2, group=64, lora_rank=0, build_context=8192)
    assert two.layers_on_chip() == []
    with pytest.raises(RomaError, match="--pe 5: the layers' rows .* must split"):
        P.make_plan(smollm2, "kv260", bits=2, group=64, lora_rank=0, pe=5)
    # a build for a 2K context, the KV260's default (boards.json max_context), has a quarter of the scores, and fits
    short = P.make_plan(smollm2, "kv260", bits=4, group=32, lora_rank=0)
    assert short.context == 2048 and not short.over_budget and short.bram36_used <= 115
    # its memory fits, and so does its logic by the estimate: one GEMV engine for all layers and linears, not one per
    # linear (the head, at the layers' 4 bits here, streams on it too)
    assert short.logic_over == [] and "logic estimate above" not in short.summary
    assert [e["role"] for e in short.engines if e["gemv"]] == ["layers"]


def test_a_streamed_head_shares_the_layers_ddr_engine_where_a_port_word_holds_a_step(smollm2_plan):
    # a KV260's 128-bit weight port word is one 2-bit G64 step: the tied head, requantized to the layers' width,
    # streams on their DDR engine with tiles of its own (model_header.head_on_layers_engine), so the build has one
    # GEMV engine and its datapaths, candidate stage and locals once (the estimate was 99% of the LUTs with two)
    kw = dict(bits=2, group=64, lora_rank=0)
    kv = smollm2_plan("kv260", **kw)
    assert [e["role"] for e in kv.engines if e["gemv"]] == ["layers"] and kv.layers_streamed() == list(range(30))
    head = next(t for t in kv.tensors if t.kind == "embedding+lm_head")
    assert head.placement == P.DDR_STREAM and head.tiles == M.ddr_tiles(49152, 4) != 4
    lut = kv.logic["total"]["lut"]
    assert lut["used"] < 0.9 * lut["available"]
    # the imported 8-bit head is another configuration: an engine of its own; its group of 32, like the layers' 64
    # above the board's 16 activation lanes, takes the one quantizer right before a GEMV at run time (memory.quantizers)
    eight = smollm2_plan("kv260", per_tensor_bits={"token_embedding": 8}, **kw)
    assert [e["role"] for e in eight.engines if e["gemv"]] == ["layers", "token_embd"]
    assert M.quantizers({32, 64}, {64}, 1, 16) == {32: 1, 64: 1}  # quantize_block's for both, quantize_ahead's
    assert M.quantizers({32, 64}, {64}, 1, 64) == {32: 1, 64: 2}  # at 64 lanes each group has its own
    quant = [u for u in eight.logic["units"] if u["unit"].startswith("activation quantizer")]
    assert [(u["inputs"]["simd"], u["count"]) for u in quant] == [(16, 2)]
    # a U250's 512-bit port word carries four such steps, whose outputs go out after the rounds: its head keeps its
    # engine (of one token lane, the layers' have two)
    u250 = smollm2_plan("u250", bits=2, group=64, scales="q8")  # its LoRA unit streams layers 26-29 too
    assert {(e["role"], e["tier"]) for e in u250.engines if e["gemv"]} >= {("layers", "ddr"), ("token_embd", "ddr")}


def test_embedding_leaves_the_chip_first_for_untied_models():
    cfg = ModelConfig(name="tiny-untied", n_layers=4, dim=256, ffn_dim=512, n_heads=4, n_kv_heads=2,
                      vocab_size=8192, context_length=1024, rope_theta=1e4, rms_eps=1e-5, tied_embeddings=False)
    plan = P.make_plan(cfg, "zcu104", bits=4, group=32, lora_rank=0, budget=0.8)
    _check_invariants(plan)
    assert plan.layers_streamed() == [] and "embedding from DDR" in plan.summary
    # fill order: the layers, the lm head, the embedding last, so the embedding is never on chip without the head
    for board, budget in (("zcu104", 0.3), ("zcu104", 0.8), ("u250", 0.1), ("u250", 0.3), ("u250", 0.8)):
        kinds = {t.kind: t.placement for t in P.make_plan(cfg, board, bits=4, group=32, lora_rank=0,
                                                          budget=budget).tensors if t.layer is None}
        assert kinds["embedding"] == P.DDR_STREAM or kinds["lm_head"] != P.DDR_STREAM, (board, budget)


def test_pynq_z2_never_uses_uram():
    assert get_board("pynq-z2").uram == 0
    cfg = ModelConfig(name="tiny", n_layers=4, dim=256, ffn_dim=512, n_heads=4, n_kv_heads=2, vocab_size=8192,
                      context_length=1024, rope_theta=1e4, rms_eps=1e-5, tied_embeddings=False)
    for bits, group in ((4, 32), (2, 64)):
        plan = P.make_plan(cfg, "pynq-z2", bits=bits, group=group, lora_rank=1, lora_targets=("wq", "wv"),
                           kv_tokens=8)
        _check_invariants(plan)
        assert plan.uram_used == 0
        assert all(t.placement != P.URAM_LOAD_ONCE for t in plan.tensors)
        assert plan.lora.uram == 0 and plan.lora.bram36 > 0 and plan.kv_cache.bram36 > 0


def test_the_prefill_chunk_is_the_boards_unless_its_buffers_cost_weights(smollm2):
    # a U250 runs a prefill in chunks of up to 64 tokens (boards.json prefill_chunk): with its default LoRA unit four
    # layers stream whatever the chunk, so the chunk's 96 BRAM36 more than 16 cost no weight its place
    kw = dict(bits=2, group=64, scales="q8", per_tensor_bits={"token_embedding": 2})
    wide = P.make_plan(smollm2, "u250", **kw)
    assert wide.board.prefill_chunk == get_board("u250").prefill_chunk == 64
    assert wide.buffers.what == "activations and buffers (prefill chunk 64)"
    # ... without a LoRA unit every layer is on chip and 64 would push weights off: the plan halves it while it costs
    # them their place (32), and a budget a few blocks short takes it down to 16, the smallest
    full, narrow = (P.make_plan(smollm2, "u250", **kw, lora_rank=0, budget=b) for b in (0.8, 0.785))
    assert full.board.prefill_chunk == 32 and full.layers_on_chip() == list(range(30))
    assert narrow.board.prefill_chunk == P.MIN_PREFILL_CHUNK == 16 == get_board("kv260").prefill_chunk
    assert narrow.buffers.bram36 < full.buffers.bram36 < wide.buffers.bram36


def test_higher_lora_rank_leaves_less_room_for_layers(smollm2_plan):
    for board, bits, group in (("u250", 2, 64), ("u250", 4, 32)):
        layers, on_chip, lora = [], [], []
        for rank in (0, 1, 4, 16):
            plan = smollm2_plan(board, bits=bits, group=group, lora_rank=rank)
            _check_invariants(plan)
            layers.append(len(plan.layers_on_chip()))
            on_chip.append(plan.on_chip_bytes)
            lora.append(plan.lora.bytes)
        assert layers == sorted(layers, reverse=True) and on_chip == sorted(on_chip, reverse=True)
        assert lora == sorted(lora) and lora[0] == 0
        assert layers[0] > layers[-1]


def test_lora_rank_that_does_not_fit_names_the_largest_that_does(smollm2):
    with pytest.raises(RomaError) as e:
        P.make_plan(smollm2, "kv260", bits=4, group=32, lora_rank=16)
    msg = str(e.value)
    assert "LoRA rank 16" in msg and "largest rank that fits with these targets is 2" in msg
    P.make_plan(smollm2, "kv260", bits=4, group=32, lora_rank=2)  # ... and it does fit
    # contract C1: values [slots][SLOT_VALUES] fp16 in 64-bit words, URAM where they fit
    plan = P.make_plan(smollm2, "u250", bits=4, group=32, lora_rank=16, lora_slots=2)
    values = next(a for a in plan.arrays if a.name == "g_lora.values")
    assert values.dims == [2, 30 * 16 * (2 * 1152 + 2 * 768 + 3 * 2112)] and (values.width, values.impl) == (64, "uram")
    assert plan.lora.uram == values.uram == -(-(2 * values.dims[1] // 4) // 4096)
    # int8 LoRA with an fp32 scale per row of A and of B (contract C1): under two thirds of fp16 at rank 8.
    fp16 = P.make_plan(smollm2, "u250", bits=2, group=64, lora_rank=8).lora
    int8 = P.make_plan(smollm2, "u250", bits=2, group=64, lora_rank=8, lora_dtype="int8").lora
    values = 8 * 30 * (2 * 1152 + 2 * 768 + 3 * 2112)
    assert fp16.detail["elements"] == values and values * 2 < fp16.bytes < values * 2 + 2048
    assert int8.bytes < 0.65 * fp16.bytes
    # the reservation is per slot: a build's LoRA unit of 3 slots reserves 3 of them (0: none)
    assert P.make_plan(smollm2, "u250", bits=2, group=64, lora_rank=8, lora_slots=3).lora.bytes == pytest.approx(3 * fp16.bytes, rel=0.01)
    assert P.make_plan(smollm2, "u250", bits=2, group=64, lora_rank=8, lora_slots=0).lora.bytes == 0


def test_every_boards_default_lora_unit_fits_smollm2(smollm2):
    # boards.json's lora_unit is what `roma compile` reserves by default: it fits SmolLM2 with the buffers
    for name, board in load_boards().items():
        u = board.lora_unit
        plan = P.make_plan(smollm2, name, bits=2, group=64, lora_slots=u.slots, lora_rank=u.rank,
                           lora_targets=u.targets, lora_dtype=u.dtype)
        assert plan.lora.bytes > 0, name


def test_the_accuracy_recipes_rank_64_lora_fits_the_default_u250_unit(smollm2):
    # benchmarks/accuracy.md compiles its builds on the default board with a compensating LoRA of rank 64
    # (--lora-rank 64 --lora-slot-rank 64): the U250's default unit holds it beside the core's buffers in its int8
    # codes, where an fp16 one does not (roma compile refused the recipes while the default was fp16)
    u = load_boards()["u250"].lora_unit
    for bits, group, scales in ((2, 64, "fp16"), (3, 64, "fp16"), (3, 32, "q8")):
        plan = P.make_plan(smollm2, "u250", bits=bits, group=group, scales=scales, lora_slots=u.slots, lora_rank=64,
                           lora_targets=u.targets, lora_dtype=u.dtype)
        assert plan.lora.detail["elements"] == 64 * 30 * (2 * 1152 + 2 * 768 + 3 * 2112), (bits, group, scales)
    with pytest.raises(RomaError, match="largest rank that fits with these targets is 54"):
        P.make_plan(smollm2, "u250", bits=3, group=32, scales="q8", lora_slots=u.slots, lora_rank=64,
                    lora_targets=u.targets, lora_dtype="fp16")


def test_the_prefill_roofline_reads_weights_once_per_block_and_the_head_once(smollm2_plan):
    # a KV260 4-bit G32 build streams every weight (memory-bound): a 256-token prompt reads each layer's weights once
    # per token (one token lane) and the lm head once, for the last token's logits
    kv = smollm2_plan("kv260", bits=4, group=32, lora_rank=0)
    assert all(t.placement == P.DDR_STREAM for t in kv.tensors if t.kind != "norm")
    linears = sum(t.bytes for t in kv.tensors if t.kind == "linear")
    head = sum(t.bytes for t in kv.tensors if t.kind not in ("linear", "norm"))
    weight_bw = kv.estimate["model"]["weight_stream_gbs"] * 1e9
    assert kv.estimate["prefill_breakdown_us"]["weights"] == pytest.approx((256 * linears + head) / weight_bw * 1e6)
    # a U250 reads its DDR KV cache once per block of its two token lanes' queries: block b reads keys 0..2b+1
    u250 = smollm2_plan("u250", bits=2, group=64, lora_rank=0)
    kv_row = 30 * 2 * 192 * 2  # every layer's fp16 key and value of a position
    assert u250.estimate["prefill_breakdown_us"]["attention"] == pytest.approx(
        kv_row * sum(2 * (b + 1) for b in range(128)) / (u250.board.ddr_bandwidth_gbs * 1e9) * 1e6)
    assert u250.estimate["prefill_tokens_per_s"] > 4 * u250.estimate["decode_tokens_per_s"]
    assert "prefill tokens/s for a 256-token prompt" in P.render_table(u250)


def test_kv_cache_is_on_chip_only_when_asked(smollm2, smollm2_plan):
    ddr = smollm2_plan("u250", bits=2, group=64, lora_rank=0)
    assert ddr.kv_cache.placement == "DDR" and ddr.kv_cache.bytes == 0
    onchip = P.make_plan(smollm2, "u250", bits=4, group=32, lora_rank=0, kv_tokens=64)
    assert onchip.kv_cache.bytes == 64 * 30 * 2 * 192 * 2 and onchip.kv_cache.uram > 0
    base = smollm2_plan("u250", bits=4, group=32, lora_rank=0)  # its URAM is the KV's, not the weights'
    assert onchip.on_chip_bytes <= base.on_chip_bytes and onchip.uram_used > base.uram_used
    with pytest.raises(RomaError, match="at most .* tokens fit on chip"):
        P.make_plan(smollm2, "kv260", bits=4, group=32, lora_rank=0, kv_tokens=4096)


def test_mixed_precision_per_tensor_bits(smollm2):
    plan = P.make_plan(smollm2, "zcu104", bits=2, group=64, lora_rank=0, per_tensor_bits={"w_down": 4,
                                                                                            "layers.0.wq": 8})
    bits = {t.name: t.bits for t in plan.tensors}
    assert bits["layers.5.w_down"] == 4 and bits["layers.0.wq"] == 8 and bits["layers.1.wq"] == 2
    # GGUF-style names (what compiler.build passes) mean the same tensors.
    gguf = P.make_plan(smollm2, "zcu104", bits=2, group=64, lora_rank=0,
                       per_tensor_bits={"blk.0.wq": 8, "token_embd": 4})
    bits = {t.name: t.bits for t in gguf.tensors}
    assert bits["layers.0.wq"] == 8 and bits["token_embedding"] == 4
    with pytest.raises(RomaError, match="unknown tensor"):
        P.make_plan(smollm2, "zcu104", per_tensor_bits={"layers.99.wq": 4}, lora_rank=0)


def test_per_tensor_groups_count_their_scales(smollm2):
    """A mixed build's groups (G128 on 1536-wide w_down, G32 on one wq) price each tensor's scales by its own
    group, even where --group would not divide every row."""
    plan = P.make_plan(smollm2, "zcu104", bits=3, group=128, lora_rank=0, scales="q8",
                       per_tensor_groups={"wq": 64, "wk": 64, "wv": 64, "wo": 64, "w_gate": 64, "w_up": 64,
                                          "token_embedding": 32, "blk.0.wq": 32})
    by_name = {t.name: t for t in plan.tensors}
    down, wq0, wq1 = by_name["layers.3.w_down"], by_name["layers.0.wq"], by_name["layers.1.wq"]
    assert (down.group, wq0.group, wq1.group) == (128, 32, 64)
    assert down.scale_bytes == (576 * 1536 // 128 * 16 + 576 * 16) // 8
    assert wq0.scale_bytes == (576 * 576 // 32 * 16 + 576 * 16) // 8
    assert plan.to_dict()["quantization"]["per_tensor_groups"]["layers.0.wq"] == 32
    with pytest.raises(RomaError, match="does not divide its 576-wide rows"):
        P.make_plan(smollm2, "zcu104", lora_rank=0, per_tensor_groups={"wq": 128})
    with pytest.raises(RomaError, match="not divisible by the group size 128"):
        P.make_plan(smollm2, "zcu104", group=128, lora_rank=0, per_tensor_groups={"wq": 64})


@pytest.mark.parametrize("kwargs, text", [
    ({"bits": 5}, "unsupported bits 5"),
    ({"group": 48}, "unsupported group size 48"),
    ({"lora_rank": -1}, "LoRA rank must be an integer >= 0"),
    ({"lora_slots": -1}, "the LoRA slot count must be an integer >= 0"),
    ({"lora_targets": ("wq", "attn")}, "unknown LoRA target(s) attn"),
    ({"lora_dtype": "fp8"}, "unsupported LoRA dtype"),
    ({"budget": 1.5}, "budget must be a fraction"),
    ({"kv_tokens": 10**6}, "exceeds the model's context length"),
])
def test_bad_inputs_are_roma_errors(smollm2, kwargs, text):
    with pytest.raises(RomaError) as e:
        P.make_plan(smollm2, "u250", **kwargs)
    assert text in str(e.value)


def test_unknown_board_lists_the_known_ones(smollm2):
    with pytest.raises(RomaError) as e:
        P.make_plan(smollm2, "zcu999")
    assert "unknown board 'zcu999'" in str(e.value)
    for name in ("pynq-z2", "kv260", "zcu104", "zcu102", "u250", "u280"):
        assert name in str(e.value)


# --- board data ------------------------------------------------------------------------------------------


def test_boards_file_matches_the_architecture_table():
    boards = load_boards()
    facts = {"pynq-z2": (140, 0, 220), "kv260": (144, 64, 1248), "zcu104": (312, 96, 1728),
             "zcu102": (912, 0, 2520), "u280": (2016, 960, 9024), "u250": (2688, 1280, 12288)}
    for name, (bram, uram, dsp) in facts.items():
        b = boards[name]
        assert (b.bram36, b.uram, b.dsp) == (bram, uram, dsp)
        assert not b.uram_initialisable and b.bram_rom
    assert boards["pynq-z2"].family == "zynq7" and boards["u250"].family == "alveo"
    # the KV cache's own port: Zynq-7000 HP 64 bits, Zynq UltraScale+ HP 128, Alveo DDR 512, U280 HBM channel 256
    assert {n: b.kv_port_bits for n, b in boards.items()} == {
        "pynq-z2": 64, "kv260": 128, "zcu104": 128, "zcu102": 128, "u250": 512, "u280": 256}
    # the weight port: a Zynq-7000 HP port is 64 bits, a Zynq UltraScale+ S_AXI_HP port 128, an Alveo DDR/HBM port 512
    assert {n: b.weight_port_bits for n, b in boards.items()} == {"pynq-z2": 64, "kv260": 128, "zcu104": 128,
                                                                   "zcu102": 128, "u250": 512, "u280": 512}


def test_board_schema_errors_name_board_and_field(tmp_path):
    data = json.loads((HOST / "roma_runtime/artifact/boards.json").read_text())
    data["boards"]["kv260"]["bram36"] = "lots"
    f = tmp_path / "boards.json"
    f.write_text(json.dumps(data))
    with pytest.raises(RomaError) as e:
        load_boards(f)
    assert "'kv260'" in str(e.value) and "'bram36'" in str(e.value)
    data["boards"]["kv260"]["bram36"] = 144
    data["boards"]["kv260"].pop("uram")
    f.write_text(json.dumps(data))
    with pytest.raises(RomaError, match="board 'kv260' lacks field 'uram'"):
        load_boards(f)
    data["boards"]["kv260"]["uram"] = 64
    data["boards"]["kv260"]["kv_port_bits"] = 100  # not an AXI data width
    f.write_text(json.dumps(data))
    with pytest.raises(RomaError, match="board 'kv260' has an invalid 'kv_port_bits': 100"):
        load_boards(f)
    data["boards"]["kv260"]["weight_port_bits"] = 100
    f.write_text(json.dumps(data))
    with pytest.raises(RomaError, match="'weight_port_bits': 100") as e:
        load_boards(f)
    assert "64, 128, 256, 512" in e.value.hint
    data["boards"]["kv260"].update(weight_port_bits=128, kv_port_bits=128)
    for lanes, bad in (({"norm": 4, "swiglu": 3, "rope": 2, "residual": 4}, "swiglu: 3"),  # not a power of two
                       ({"norm": 4, "swiglu": 2, "rope": 2}, "'rope': 2}"),  # a unit missing
                       ({"norm": 128, "swiglu": 2, "rope": 2, "residual": 4}, "norm: 128")):
        data["boards"]["kv260"]["elementwise_lanes"] = lanes
        f.write_text(json.dumps(data))
        with pytest.raises(RomaError, match=f"board 'kv260' has an invalid 'elementwise_lanes'.*{bad}") as e:
            load_boards(f)
        assert "power of two" in e.value.hint
    data["boards"]["kv260"]["elementwise_lanes"] = {"norm": 4, "swiglu": 2, "rope": 2, "residual": 4}
    # memory banks: each of the board's m_axi bundles (its 4 weight ports, 1 KV port) once, or none
    banks = {"gmem_weights": "DDR[0]", "gmem_weights_1": "DDR[1]", "gmem_weights_2": "DDR[2]",
             "gmem_weights_3": "DDR[3]", "gmem_kv": "DDR[1]", "gmem_tok": "DDR[2]", "gmem_logits": "DDR[2]",
             "gmem_lora": "DDR[2]", "gmem_status": "DDR[2]"}
    data["boards"]["kv260"]["memory_banks"] = banks
    f.write_text(json.dumps(data))
    assert load_boards(f)["kv260"].memory_banks == banks
    data["boards"]["kv260"]["memory_banks"] = {**banks, "gmem_kv_1": "DDR[3]"}  # a KV port it does not have
    f.write_text(json.dumps(data))
    with pytest.raises(RomaError, match="'kv260' field 'memory_banks' must name the memory of each of roma_core's "
                                        "m_axi bundles at its weight_ports and kv_ports, gmem_kv, gmem_logits"):
        load_boards(f)


def test_elementwise_lanes_per_board_follow_the_model(smollm2_plan):
    """Alveo cards wide, the KV260's SwiGLU narrow; a build halves a unit's lanes until they divide its vector; the
    logic estimate counts the units at those lanes."""
    boards = load_boards()
    assert boards["u250"].elementwise_lanes.swiglu == 16 and boards["kv260"].elementwise_lanes.swiglu == 2
    tiny = boards["u250"].elementwise_lanes.for_model(dim=64, ffn_dim=40, head_dim=16)
    assert (tiny.norm, tiny.swiglu, tiny.rope, tiny.residual) == (16, 8, 8, 16)
    units = {}
    for board in ("u250", "kv260"):
        logic = smollm2_plan(board, bits=2, group=64, lora_rank=0).logic
        units[board] = {u["unit"].split(" (")[0]: u for u in logic["units"]}
    simd = {b: {k: units[b][k]["inputs"]["simd"] for k in ("RMSNorm", "RoPE", "SwiGLU", "residual add")}
            for b in units}
    assert simd == {"u250": {"RMSNorm": 16, "RoPE": 16, "SwiGLU": 16, "residual add": 16},
                    "kv260": {"RMSNorm": 4, "RoPE": 2, "SwiGLU": 2, "residual add": 4}}
    # a SwiGLU per token lane: the U250's two of 16 lanes, the KV260's one of 2
    assert (units["u250"]["SwiGLU"]["count"], units["kv260"]["SwiGLU"]["count"]) == (2, 1)
    assert units["u250"]["SwiGLU"]["dsp"] == 2 * 8 * units["kv260"]["SwiGLU"]["dsp"] > 0


# --- rendering and the CLI -------------------------------------------------------------------------------


def test_table_is_compact_per_layer_and_full_per_tensor(smollm2_plan):
    plan = smollm2_plan("u250", bits=4, group=32, lora_rank=0)
    compact, full = plan.render(), plan.render(per_tensor=True)
    assert "layers 0-12" in compact and "layers 17-29" in compact  # (ffn-pair: 0-12 BRAM-ROM+URAM, 13-16 URAM)
    assert "logic (estimate" in compact and "GEMV engine #0 layers" in compact
    assert len(compact.splitlines()) < 70
    assert full.count("layers.") == 30 * 9
    assert plan.summary in compact and "estimate" in compact


def _roma(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HOST), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "roma_runtime.cli", "plan", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_cli_json():
    r = _roma("--model", "smollm2-135m", "--board", "u250", "--bits", "2", "--group", "64", "--lora-rank", "0",
              "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["layers_streamed"] == [] and d["board"]["name"] == "u250"
    assert len(d["tensors"]) == 30 * 9 + 2
    # the logic estimate: per unit with the formula's inputs, and the totals against the board
    logic = d["logic"]
    gemv = [u for u in logic["units"] if u["unit"].startswith("GEMV engine")]
    assert gemv and gemv[0]["inputs"]["W"] == 2 and gemv[0]["inputs"]["Q"] == 64
    assert d["resources"]["dsp"]["available"] == 12288 and d["resources"]["lut"]["used"] > 0
    # the quantizers at the board's act_lanes, at most the group (the layers' 2-bit G64 a whole group of 64 on a U250,
    # the 8-bit G32 head's 32), two per group and token lane (before and beside a GEMV; the head's group: one, before);
    # in front of each engine's PEs the candidates, a quad per four of them, once per engine and token lane
    assert get_board("u250").act_lanes == 64
    quant = [u for u in logic["units"] if u["unit"].startswith("activation quantizer")]
    cand = [u for u in logic["units"] if u["unit"].startswith("candidate stage")]
    assert sorted(u["inputs"]["simd"] for u in quant) == [32, 64]
    assert all(u["unit"].startswith(f"activation quantizer of {u['inputs']['simd']} lanes") for u in quant)
    assert sorted(u["inputs"]["quads_per_cycle"] for u in cand) == [8, 16]
    tokens = [u["inputs"]["token_lanes"] for u in gemv]
    assert sorted(set(tokens)) == [1, get_board("u250").token_lanes]
    # ... the FFN pair's two engines as one of two banks (its ROM engine's lanes are the URAM engine's)
    shared = sum(e["token_lanes"] for e in d["engines"] if e["two_banks_with"] is not None and e["tier"] == "rom")
    assert shared == get_board("u250").token_lanes
    assert sum(u["count"] for u in quant) == 2 * get_board("u250").token_lanes + 1
    assert sum(u["count"] for u in cand) == sum(tokens) - shared < sum(u["inputs"]["tiles"] for u in gemv)


def test_cli_plans_the_embedding_as_roma_compile_stores_it():
    # --embedding-bits as roma compile's: SmolLM2's Q8_0 embedding passes through at 8 bits (its own group and fp16
    # scales) by default; below that it is requantized in the linears' group and scale format, as the build's is
    def embedding(*args):
        r = _roma("--model", "smollm2-135m", "--board", "u250", "--bits", "2", "--group", "64", "--scales", "q8",
                  *args, "--json")
        assert r.returncode == 0, r.stderr
        t = next(t for t in json.loads(r.stdout)["tensors"] if t["name"] == "token_embedding")
        return t["bits"], t["group"], t["scales"]

    with ThreadPoolExecutor(max_workers=3) as pool:  # the three runs at once, seconds of loading and planning each
        default, two, four = pool.map(lambda args: embedding(*args),
                                      [(), ("--embedding-bits", "2"), ("--tensor-bits", "token_embedding=4")])
    assert default == (8, 32, "fp16")
    assert two == (2, 64, "q8")
    assert four == (4, 64, "q8")


def test_cli_unknown_board_exits_2():
    r = _roma("--board", "nosuchboard")
    assert r.returncode == 2
    assert r.stderr.startswith("error: unknown board 'nosuchboard'") and "kv260" in r.stderr
