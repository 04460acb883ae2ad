"""The footprint check (compiler/placement/footprint.py, issue 19): roma_core.cpp compiled on the synthesis path against a
real tiny build, its object file read back: array sizes and layouts, BRAM36/URAM blocks, kernel instances, and the
verdict against a board's budget and the build's plan."""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from pathlib import Path

from hls_tools import make, needs_gxx

pytest.importorskip("elftools", reason="the footprint check reads DWARF with pyelftools (the dev extra)")
pytestmark = needs_gxx

from roma_runtime.artifact.boards import get_board  # noqa: E402
from roma_runtime.compiler.placement import footprint  # noqa: E402
from roma_runtime.artifact.kv_layout import port_lanes  # noqa: E402
from roma_runtime.compiler.placement.memory import BRAM_TDP_SHAPES, shape_cost  # noqa: E402

HOST = Path(__file__).resolve().parents[3] / "host"


@pytest.fixture(scope="module")
def make_footprint(tiny_build):
    """`make footprint` of the tiny build for a PYNQ-Z2 (test_make_target_and_bad_input), in a thread: started with
    tiny_measured, its g++ of roma_core runs beside that of the measure in this process."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(make, tiny_build, "footprint", BOARD="pynq-z2", FOOTPRINT_FLAGS="--json", timeout=300)


@pytest.fixture(scope="module")
def tiny_measured(tiny_build, make_footprint):
    return footprint.measure(tiny_build)


@pytest.fixture(scope="module")
def tiny_report(tiny_measured):
    return footprint.verdict(tiny_measured)


def _array(rep, name):
    hits = [a for a in rep["arrays"] if a["name"] == name]
    assert len(hits) == 1, [a["name"] for a in rep["arrays"]]
    return hits[0]


def test_reads_the_tiny_builds_arrays(tiny_build, tiny_report):
    model = json.loads((tiny_build / "manifest.json").read_text())["plan"]["model"]
    dim, vocab, n = model["dim"], model["vocab_size"], model["n_layers"]
    # the layers' ROM bank (engine 0, shared by every linear of every layer): each tile's words of all of them
    # stacked, [TILES][words], TILES the plan's PEs. 4-bit codes in 32-bit plane words, G32 -> WPS = 4 banks per
    # tile (brom_gemv_banks_rt's partitions); each bank 32 bits x (words / TILES / 4)
    pe = json.loads((tiny_build / "manifest.json").read_text())["plan"]["pe"]
    assert pe == 8  # the most tiles of at least 4 rows each: the tiny model's wk and wv have 32
    kv, ffn = dim // model["n_heads"] * model["n_kv_heads"], model["ffn_dim"]
    weights = n * (2 * dim * dim + 2 * kv * dim + 3 * ffn * dim)
    planes = _array(tiny_report, "Unit<0>::planes")
    assert planes["bytes"] == weights * 4 // 8 and planes["dims"] == [pe, weights * 4 // 32 // pe]
    assert (planes["elem_bits"], planes["banks"], planes["width"]) == (32, 4 * pe, 32)
    assert planes["depth"] == weights * 4 // 32 // pe // 4
    # two read ports (decode's row split reads a second row): true dual-port aspect ratios, 36 bits wide at most
    assert planes["impl"] == "bram" and planes["bram36"] == 4 * pe * shape_cost(32, planes["depth"], BRAM_TDP_SHAPES)
    assert any("rom_2p" in p and "roma_core.cpp" in p for p in planes["pragmas"])  # bank_tiles: a BRAM ROM
    # the fp16 scales: [TILES][groups*rows] halves of every tensor, one bank per tile
    sc = _array(tiny_report, "Unit<0>::scales")
    assert (sc["bytes"], sc["elem_bits"], sc["banks"], sc["depth"]) == (weights // 32 * 2, 16, pe, weights // 32 // pe)
    # the whole-vocabulary logits buffer: fp32, one bank, in URAM where the board has it (ROMA_LOGITS_IMPL;
    # tiny_build targets a U250): 4K words per URAM
    lg = _array(tiny_report, "(anonymous namespace)::g_logits")
    # g_logits: cyclic by the logits written or read per cycle (the U250's 4 weight ports write 4, LOGITS_OUT reads
    # a 512-bit port's 16)
    assert (lg["bytes"], lg["width"], lg["banks"], lg["depth"], lg["impl"]) == (4 * vocab, 32, 16, vocab // 16, "uram")
    assert lg["bram36"] == 0 and lg["uram"] == 16 * -(-vocab // 16 // 4096)
    # g_lora is counted member by member: the build's LoRA unit (tiny_build: 4 slots of rank 16 on every linear,
    # int8 as a U250's), its values as 64-bit words (8 int8 codes each) in URAM where the plan reserved them, and
    # the fp32 scale of each row of A and B, two a word
    unit = json.loads((tiny_build / "manifest.json").read_text())["lora_unit"]
    assert unit["dtype"] == "int8"
    values = _array(tiny_report, "(anonymous namespace)::g_lora.values")
    elements = unit["slots"] * n * unit["rank"] * (9 * dim + 2 * kv + 3 * ffn)  # sum over the 7 linears of in + out
    assert (values["elem_bits"], values["width"], values["depth"]) == (8, 64, elements // 8)
    assert values["impl"] == "uram" == unit["placement"].lower() and values["uram"] == -(-elements // 8 // 4096)
    rows = unit["slots"] * n * (7 * unit["rank"] + 3 * dim + 2 * kv + 2 * ffn)  # A's rank rows, B's output rows
    scales = _array(tiny_report, "(anonymous namespace)::g_lora.row_scale")
    assert (scales["elem_bits"], scales["width"], scales["depth"]) == (32, 64, rows // 2)
    # the unused dot probes are listed, not counted
    assert any("probe" in d["name"] for d in tiny_report["dropped"])
    assert tiny_report["bram36"] == pytest.approx(sum(a["bram36"] for a in tiny_report["arrays"]))
    assert tiny_report["std"] == "c++14"


def test_one_layer_and_one_engine_per_configuration(tiny_build, tiny_report):
    # issue 19: the layer index and the linear are run-time values, so the synthesis object holds one layer
    # function and one GEMV engine per configuration, shared by every layer and linear of it (the uniform tiny
    # build: one for the layers, one for the untied lm head; the untied embedding is only looked up), one linear()
    # dispatch and one LoRA apply
    model = json.loads((tiny_build / "manifest.json").read_text())["plan"]["model"]
    k = tiny_report["kernels"]
    assert k["layer"] == {"templates": 1, "rtl_instances": 1, "max_rtl_instances": 1}
    assert k["GEMV engine (tiles)"] == {"templates": 2, "rtl_instances": 2, "max_rtl_instances": 1}
    assert k["linear (engine dispatch + LoRA)"]["rtl_instances"] == 1 == k["LoRA apply"]["rtl_instances"]
    # no engine of two banks (its FFN pair is not a ROM and a URAM engine): linear_pair's empty overload is no unit
    assert k["linear pair (two-bank engine + LoRA)"]["rtl_instances"] == 0
    # two quantizers (right before a GEMV, and beside the one before it: the layers' groups only), each one per
    # group and token lane (a call site each; a group of the head's only has one lane)
    manifest = json.loads((tiny_build / "manifest.json").read_text())
    tt, tensors = manifest["board"]["token_lanes"], manifest["tensors"]
    layer_groups = {t["group"] for name, t in tensors.items() if name.startswith("blk.")}
    head_only = {tensors["output"]["group"]} - layer_groups
    assert k["activation quantizer"]["rtl_instances"] == 2 * tt * len(layer_groups) + len(head_only)
    # the plan's prefill chunk is the header's (its buffers' rows)
    chunk = manifest["board"]["prefill_chunk"]
    assert f"constexpr int PREFILL_CHUNK = {chunk};" in (tiny_build / "roma_model.h").read_text() and chunk == 64
    assert tiny_report["engines"] == {"engines": 2, "configurations": 2}
    # the two forward() call sites of roma_core (PREFILL/DECODE and GENERATE) share one instance (ALLOCATION limit),
    # and so do the sampler's two: one of each kernel; the elementwise units have one per token lane (RMSNorm's
    # first also serves the final norm), the residual add two
    for kernel in ("sampler", "attention"):
        assert k[kernel]["rtl_instances"] == 1, kernel
    for kernel, n in (("RMSNorm", tt), ("RoPE", tt), ("SwiGLU", tt), ("residual add", 2 * tt)):
        assert k[kernel]["rtl_instances"] == n, kernel
    # a function's local arrays are memories of each of its RTL instances: the FFN step's buffers, fp32, a row per
    # token lane, once for layer()'s two call sites (ALLOCATION)
    o_f = [a for a in tiny_report["local_arrays"] if a["name"] == "ffn_step::o_f"]
    assert len(o_f) == 1 and (o_f[0]["instances"], o_f[0]["bytes"]) == (1, 4 * model["dim"] * tt), o_f
    assert tiny_report["total_bram36"] == tiny_report["bram36"] + tiny_report["local_bram36"]
    # the activation quantizers' inputs and outputs for each token lane, partitioned where they are declared: the
    # GEMV inputs (h) and the codes (q0, q1: written and read by every engine, at most the board's act_lanes a cycle;
    # the tiny build's 4-bit G32 on a U250 takes 32 of 64) by the board's act_lanes
    act, group = manifest["board"]["act_lanes"], tensors["blk.0.wq"]["group"]
    assert (act, group) == (64, 32)
    read = [a for a in tiny_report["local_arrays"] if a["name"] in ("layer::h0", "forward::q0", "forward::q1")]
    assert [a["banks"] for a in read] == [tt * act] * 3, read
    assert not [a for a in tiny_report["arrays"] if "gemv_unit<" in a["name"] and a["var"] == "xq"]
    text = footprint.render(tiny_report)
    assert "GEMV engines: 2 for 2 configurations" in text


def test_an_engine_per_configuration_of_a_mixed_build(tiny_models, tmp_path):
    # layer 1 streamed from DDR: every linear has two configurations (ROM, DDR stream), so two engines, each
    # shared by its layers; the on-chip banks hold layer 0 only
    from roma_runtime.compiler.build import compile_model

    # ... with an int8 LoRA unit on wq and wv only: memory for those two linears and nothing for the others
    man = compile_model(tiny_models["q4_1"], tmp_path / "b", board="u250", ddr="1", progress=False, lora_slots=2,
                        lora_slot_rank=4, lora_targets=["wq", "wv"], lora_dtype="int8")
    rep = footprint.verdict(footprint.measure(tmp_path / "b"), "u250")
    model = man["plan"]["model"]
    dim, kv = model["dim"], model["dim"] // model["n_heads"] * model["n_kv_heads"]
    values, row_scale = (_array(rep, f"(anonymous namespace)::g_lora.{m}") for m in ("values", "row_scale"))
    assert values["elem_bits"] == 8 and values["bytes"] == 2 * model["n_layers"] * 4 * ((dim + dim) + (dim + kv))
    assert (values["width"], row_scale["width"], row_scale["elem_bits"]) == (64, 64, 32)
    assert row_scale["bytes"] == 4 * 2 * model["n_layers"] * ((4 + dim) + (4 + kv))  # fp32 per row of A and B
    assert _array(rep, "(anonymous namespace)::g_lora.rank")["dims"] == [2, model["n_layers"], 2]  # per target
    assert rep["kernels"]["layer"]["rtl_instances"] == 1
    assert rep["kernels"]["GEMV engine (tiles)"]["max_rtl_instances"] == 1
    # the layers' ROM engine, their DDR engine, the lm head's
    assert rep["engines"] == {"engines": 3, "configurations": 3}
    assert rep["kernels"]["DDR-streamed GEMV"]["templates"] >= 1
    ffn = model["ffn_dim"]
    layer0 = 2 * dim * dim + 2 * kv * dim + 3 * ffn * dim  # the bank holds layer 0's tensors; layer 1 has none
    assert _array(rep, "Unit<0>::planes")["bytes"] == layer0 * 4 // 8
    assert not any("GEMV engines for" in f or "RTL instances" in f for f in rep["failures"])


def test_uram_banks_follow_their_storage_pragmas_and_the_plan(tiny_uram_build):
    # layer 1 and the lm head in URAM (--uram), layer 0 "ffn-pair" (its gate in ROM, the rest in URAM): per tensor the
    # plan (manifest placement), the header (URAM_* offset) and the bank's storage pragmas (load_uram_bank:
    # BIND_STORAGE uram, 64-bit words) say the same place
    from roma_runtime.artifact.build import BRAM_ROM, URAM_LOAD_ONCE, split_name

    man = json.loads((tiny_uram_build / "manifest.json").read_text())
    model_h = (tiny_uram_build / "roma_model.h").read_text()
    rep = footprint.measure(tiny_uram_build)
    uram = footprint.uram_banks(model_h)
    assert uram == {0, 3}  # the layers' URAM engine (wq of layer 0 first) and the lm head's; 1: the layers' ROM one
    for name, e in man["tensors"].items():  # (layer 0's gate), 2: the embedding
        key = split_name(name)
        unit = (1 if key == (0, "w_gate") else 0) if key else 2 if name == "token_embd" else 3
        in_uram = unit in uram
        assert e["placement"] == (URAM_LOAD_ONCE if in_uram else BRAM_ROM), name
        assert (e.get("uram_offset") is not None) == in_uram
        for var in ("planes", "scales", "mins"):
            a = _array(rep, f"Unit<{unit}>::{var}")
            assert (a["impl"] == "uram") == in_uram and (a["uram"] > 0) == in_uram, (name, var, a["impl"])
            if in_uram:
                assert a["width"] == 64 and a["bram36"] == 0  # two 32-bit plane words or four 16-bit entries
                assert any("impl=uram" in p and "roma_core.cpp" in p for p in a["pragmas"])
    assert rep["uram"] == pytest.approx(sum(a["uram"] for a in rep["arrays"])) and rep["uram"] > 0
    assert rep["plan"]["uram"] > 0


def test_the_plans_memory_model_is_the_objects(tiny_report):
    # issue 19: the planner lists the arrays roma_core declares for its plan and lays them out with the
    # footprint's own rules (placement/memory.py), so the two agree array by array: the engines' banks, their
    # kernels' local arrays, the norms, chunk activations, logits, attention's scores and the LoRA unit
    rows = {r["array"]: r for r in tiny_report["per_array"]}
    assert {"Unit<0>::planes", "Unit<2>::planes", "g_logits", "g_lora.values",
            "attention_lanes<...>::score", "brom_gemv_banks_rt<...>::acc"} <= set(rows)
    off = {name for name, r in rows.items() if not r["agrees"]}
    assert not off, off
    # every pragma applied: the factors the kernels name are template parameters or static constants the object's
    # debug information keeps (the DDR stream's LANES and EX_BANKS, attention's GROUP), and the plan evaluates them
    assert tiny_report["unresolved"] == [] and not any("not applied" in f for f in tiny_report["failures"])
    ql = [a for a in tiny_report["local_arrays"] if a["name"].startswith("attention_lanes<") and a["var"] == "ql"]
    assert len(ql) == 1 and any("factor=GROUP" in p and "not applied" not in p for p in ql[0]["pragmas"]), ql
    assert tiny_report["total_bram36"] == pytest.approx(tiny_report["plan"]["bram36"], rel=0.05)
    assert tiny_report["total_uram"] == pytest.approx(tiny_report["plan"]["uram"], rel=0.05)
    assert "per array against the plan's model" in footprint.render(tiny_report)


def test_elementwise_buffers_are_partitioned_for_their_lanes(tiny_build, tiny_report):
    """The buffers RMSNorm, RoPE and the residual add read or write each cycle are partitioned where they are
    declared for the build's lanes (tiny_build: a U250's 16 lanes; RoPE a tiny head's 8 pairs: 16 values), and the
    chunk's rows by token lane (a block's tokens run their elementwise units side by side, each on its own banks)."""
    header = (tiny_build / "roma_model.h").read_text()
    lanes = {u: int(n) for u, n in re.findall(r"#define ROMA_(\w+)_LANES (\d+)", header)}
    assert lanes == {"NORM": 16, "SWIGLU": 16, "ROPE": 8, "RESIDUAL": 16, "ACT": 64}
    tt = int(re.search(r"constexpr int TOKEN_LANES = (\d+);", header).group(1))
    assert tt == 2  # the U250's
    banks = {a["name"].rsplit("::", 1)[-1]: a["banks"] for a in tiny_report["arrays"]}
    assert banks["g_norms"] == 16 and banks["g_x"] == 16 * tt and banks["g_q"] == banks["g_k"] == 2 * lanes["ROPE"] * tt


def test_fails_with_the_numbers_when_too_large(tiny_measured, tiny_report):
    # against a plan that promises less than the object declares
    low = {**tiny_measured, "plan": {**tiny_measured["plan"], "bram36": tiny_measured["plan"]["bram36"] / 2}}
    rep = footprint.verdict(low)
    assert not rep["ok"] and any("differs from the plan" in f for f in rep["failures"])
    # on a small board: over the budget, with both numbers in the message
    rep = footprint.verdict(tiny_measured, "pynq-z2")
    text = footprint.render(rep)
    assert "DOES NOT FIT" in text and "exceeds the pynq-z2 budget of 112.0 (80% of 140)" in text
    assert f"BRAM36 {rep['total_bram36']:,.1f} exceeds" in text


def test_passes_within_budget_without_a_plan(tiny_measured):
    # the measurement of a build without plan figures: the budget alone decides, at the object's total and just below
    no_plan = {**tiny_measured, "plan": {"bram36": None, "uram": None, "summary": None}}
    total = tiny_measured["bram36"] + tiny_measured["local_bram36"]
    rep = footprint.verdict(no_plan, "u250", bram36_budget=total)
    assert rep["ok"], rep["failures"]
    assert "FITS" in footprint.render(rep)
    tight = footprint.verdict(no_plan, "u250", bram36_budget=total - 0.5)
    assert not tight["ok"] and tight["failures"] == [f"BRAM36 {total:,.1f} exceeds the u250 budget of "
                                                     f"{total - 0.5:,.1f} (given)"]


def test_on_chip_kv_follows_its_storage_pragmas(tiny_models, tmp_path):
    # BIND_STORAGE impl = ROMA_KV_ONCHIP_IMPL (uram on a U250) and ARRAY_RESHAPE cyclic ATT_SIMD dim 3 on g_kv_chip
    from roma_runtime.compiler.build import compile_model

    man = compile_model(tiny_models["q4_1"], tmp_path / "b", board="u250", kv_onchip=16, progress=False)
    rep = footprint.measure(tmp_path / "b")
    kv = _array(rep, "(anonymous namespace)::g_kv_chip")
    model = man["plan"]["model"]
    head_dim = model["dim"] // model["n_heads"]
    simd = port_lanes(head_dim, get_board("u250").kv_port_bits)  # the U250's 512-bit KV port, halved to divide a head
    kv_dim = head_dim * model["n_kv_heads"]
    assert kv["impl"] == "uram" and kv["uram"] >= 1 and kv["bram36"] == 0
    assert kv["width"] == 16 * simd and kv["depth"] == model["n_layers"] * 2 * 16 * kv_dim // simd


def test_roma_compile_runs_the_check_and_keeps_the_build(smollm2, tiny_models, tmp_path):
    # `roma compile` checks the build it wrote. SmolLM2 at 4 bits (Q4_1 passed through) for a KV260 at the model's
    # 8K context (the board's default is 2K): the core's own buffers (attention's scores alone are 72 BRAM36) exceed
    # the board's 115, so it exits 1 with the numbers; the build stays, with the report beside it. The tiny model
    # fits a PYNQ-Z2.
    import os
    import subprocess
    import sys

    from roma_runtime.artifact.build import read_manifest

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HOST), os.environ.get("PYTHONPATH", "")]))

    def compile_for(model, board, out, *more):
        return subprocess.run([sys.executable, "-m", "roma_runtime.cli", "compile", "--model", str(model), "--board",
                               board, "--out", str(out), "--no-progress", *more], capture_output=True, text=True,
                              env=env, timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:  # the two compiles at once, a g++ of roma_core each
        big = pool.submit(compile_for, "smollm2-135m", "kv260", tmp_path / "big", "--context", "8192")
        tiny = pool.submit(compile_for, tiny_models["q4_1"], "pynq-z2", tmp_path / "tiny")
    r = big.result()
    assert r.returncode == 1, r.stderr
    assert "footprint: BRAM36" in r.stdout and "DOES NOT FIT" in r.stdout
    assert "error: the build does not fit" in r.stderr and "exceeds the kv260 budget of 115.0" in r.stderr
    assert read_manifest(tmp_path / "big")["plan"]["board"]["name"] == "kv260"  # the build is written
    rep = json.loads((tmp_path / "big" / footprint.FOOTPRINT_FILE).read_text())
    assert rep["ok"] is False and rep["board"] == "kv260" and rep["per_array"]
    # ... and the plan's memory model is the object's on a Zynq board too, array by array (its narrower lanes put
    # other banks past LUTRAM's depth: forward's RoPE angles once did, unplanned)
    assert [r["array"] for r in rep["per_array"] if not r["agrees"]] == []
    r = tiny.result()
    assert r.returncode == 0, r.stderr
    assert ": fits" in r.stdout and json.loads((tmp_path / "tiny" / footprint.FOOTPRINT_FILE).read_text())["ok"]


def test_make_target_and_bad_input(make_footprint, tmp_path):
    r = make_footprint.result()
    assert r.returncode != 0, r.stderr
    rep = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert rep["board"] == "pynq-z2" and not rep["ok"]
    assert footprint.main([str(tmp_path)]) == 2  # not a build folder: one clear error
