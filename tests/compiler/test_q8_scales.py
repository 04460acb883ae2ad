"""q8 scales end to end: a build whose linears store each group's scale and minimum as 8-bit steps of a
power of two per row (compiler/quantization/quantize.py) records it, stores it (ROM images, and the DDR image for a streamed
layer), reads back exactly the quantizer's fp16 values, runs on the emulated board as the golden model does, and
is planned with its smaller scale memory.

The tiny model is the Q4_1 GGUF of conftest.tiny_models, compiled at 3-bit G32 RTN with layer 1 in DDR.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cli_env
from roma_runtime.artifact.build import is_ddr
from roma_runtime.compiler.build import compile_model
from roma_runtime.model.loader import load_build
from roma_runtime.compiler.placement.plan import make_plan
from roma_runtime.compiler.quantization.quantize import quantize_tensor
from roma_runtime.model.loader import load_model

LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
SETTINGS = {"bits": 3, "group": 32, "method": "rtn", "board": "u250", "progress": False}


@pytest.fixture(scope="module")
def builds(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("q8")
    out = {s: root / s for s in ("fp16", "q8")}
    for s, folder in out.items():
        compile_model(tiny_models["q4_1"], folder, scales=s, ddr="1", **SETTINGS)
    return out


def test_a_q8_build_records_and_stores_its_scales(builds, tiny_models):
    manifests = {s: json.loads((f / "manifest.json").read_text()) for s, f in builds.items()}
    q8 = manifests["q8"]
    assert q8["quantization"]["scales"] == "q8" and q8["plan"]["quantization"]["scales"] == "q8"
    source = load_model(tiny_models["q4_1"])
    for name, e in q8["tensors"].items():
        if name.startswith("blk."):
            cols = e["shape"][1]
            assert e["scales"] == "q8" and e["bits_per_weight"] == 3 + 16 / 32 + 16 / cols
            assert is_ddr(e) == name.startswith("blk.1.")
        else:  # the embedding and lm head keep fp16 (their Q8_0 source passes through)
            assert e["scales"] == "fp16" and e["method"] == "passthrough"
    # less ROM and less DDR than the same build with fp16 scales: 16 bits per group, plus 16 per row
    for key in ("rom_bytes", "ddr_bytes"):
        assert q8["sizes"][key] < manifests["fp16"]["sizes"][key]
    assert q8["quantization"]["linear_bits_per_weight"] < manifests["fp16"]["quantization"]["linear_bits_per_weight"]
    header = (builds["q8"] / "roma_model.h").read_text()
    assert "constexpr int SCALES_WQ[N_LAYERS] = {1, 1};" in header and "constexpr int SCALES_OUTPUT = 0;" in header

    # what the build reads back (layer 0 from its ROM images, layer 1 from the DDR image) is exactly what the
    # quantizer made
    model = load_build(builds["q8"])
    for layer in (0, 1):
        for lin in LINEARS:
            got = getattr(model.weights.layers[layer], lin)
            want, _ = quantize_tensor(getattr(source.weights.layers[layer], lin), 3, 32, "rtn",
                                      name=f"blk.{layer}.{lin}", scales="q8")
            assert got.scale_format == "q8"
            for a, b in ((got.codes, want.codes), (got.scales, want.scales), (got.minimums, want.minimums)):
                np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                    reason="the emulated board needs g++ and make")
def test_a_q8_build_on_the_emulated_board_matches_the_golden_model(builds):
    pytest.importorskip("pynq")
    from roma_runtime.backends.emulated import EmuBackend
    from float_noise import assert_within_float_noise, golden_variant_logits
    from test_ddr_tier import IDS, TOL

    emu = EmuBackend(builds["q8"], progress=False)
    # within the golden model's float noise (int8 activation rounding can flip on the tiny random model), and
    # one of its greedy tokens
    variants = golden_variant_logits(load_build(builds["q8"]), IDS)
    assert_within_float_noise(emu.forward(IDS, emu.new_cache(64)), variants, TOL)


@pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                    reason="the emulated board needs g++ and make")
@pytest.mark.parametrize("ddr", ["1", "1,embedding,head"])
def test_a_requantized_embedding_takes_q8_scales_looked_up_on_chip_or_from_ddr(tiny_models, tmp_path, ddr):
    # --embedding-bits below the source's 8: the embedding and the untied lm head are requantized, in the linears'
    # q8 format; the core looks a token's row up in its ROM or from its DDR tiles (embedding.h, q8: the row's
    # exponents first), and the head streams q8 blocks, as the golden model computes them
    pytest.importorskip("pynq")
    from roma_runtime.backends.emulated import EmuBackend
    from float_noise import assert_within_float_noise, golden_variant_logits
    from test_ddr_tier import IDS, TOL

    folder = tmp_path / "b"
    man = compile_model(tiny_models["q4_1"], folder, scales="q8", ddr=ddr, embedding_bits=3, **SETTINGS)
    for name in ("token_embd", "output"):
        e = man["tensors"][name]
        assert (e["bits"], e["scales"], e["method"]) == (3, "q8", "rtn") and is_ddr(e) == (ddr != "1"), name
    header = (folder / "roma_model.h").read_text()
    assert "constexpr int SCALES_TOKEN_EMBD = 1;" in header and "constexpr int SCALES_OUTPUT = 1;" in header
    emu = EmuBackend(folder, progress=False)
    variants = golden_variant_logits(load_build(folder), IDS)
    assert_within_float_noise(emu.forward(IDS, emu.new_cache(64)), variants, TOL)


def test_the_plan_counts_q8_scales(smollm2):
    plans = {s: make_plan(smollm2, "u250", bits=3, group=32, lora_rank=0, scales=s) for s in ("fp16", "q8")}
    linear = {s: [t for t in p.tensors if t.kind == "linear"] for s, p in plans.items()}
    for t16, t8 in zip(linear["fp16"], linear["q8"]):
        groups = t16.rows * t16.cols // 32
        assert (t16.scale_bytes, t8.scale_bytes) == (4 * groups, 2 * groups + 2 * t16.rows)
        assert t8.code_bytes == t16.code_bytes and t8.scales == "q8"
    heads = {s: [t for t in p.tensors if t.kind != "linear" and t.group] for s, p in plans.items()}
    assert [t.bytes for t in heads["q8"]] == [t.bytes for t in heads["fp16"]]  # fp16 whatever --scales says
    assert plans["q8"].to_dict()["quantization"]["scales"] == "q8"


def test_cli_plan_takes_scales():
    run = subprocess.run([sys.executable, "-m", "roma_runtime.cli", "plan", "--board", "u250", "--bits", "3",
                          "--scales", "q8", "--lora-rank", "0", "--json"], capture_output=True, text=True,
                         cwd=REPO, env=cli_env(), timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["quantization"]["scales"] == "q8"
    bad = subprocess.run([sys.executable, "-m", "roma_runtime.cli", "plan", "--board", "u250", "--scales", "q4"],
                         capture_output=True, text=True, cwd=REPO, env=cli_env(), timeout=300)
    assert bad.returncode != 0 and "invalid choice: 'q4'" in bad.stderr
