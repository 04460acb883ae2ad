"""The model compiler: corpus, quantizers (RTN, GPTQ), LoftQ, mixed precision, build folders and load_build."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess

import gguf
import numpy as np
import pytest

from tiny_models import write_tiny_gguf, write_tiny_hf  # noqa: E402

from roma_runtime.errors import RomaError  # noqa: E402
from roma_runtime.golden import GoldenModel  # noqa: E402
from roma_runtime.model.loader import load_model  # noqa: E402
from roma_runtime.model.weights import QuantizedMatrix  # noqa: E402
from roma_runtime.model.weights import LayerWeights  # noqa: E402
from roma_runtime.model.loader import read_gguf_metadata, resolve_model_path  # noqa: E402
from roma_runtime.compiler.quantization import corpus  # noqa: E402
from roma_runtime.artifact.build import MANIFEST, tensor_names, verify_build  # noqa: E402
from roma_runtime.compiler.build import compile_model  # noqa: E402
from roma_runtime.model.loader import load_build  # noqa: E402
from roma_runtime.artifact.brom_image import Q8_EXP_MAX, Q8_EXP_MIN, q8_exponents  # noqa: E402
from roma_runtime.compiler.quantization.quantize import (codes_for, effective_group, group_params,  # noqa: E402
                                                         output_error, quantize_gptq, quantize_rtn, quantize_tensor)
from roma_runtime.compiler.quantization.loftq import loftq  # noqa: E402
from roma_runtime.compiler.quantization.mixed import assign_settings, average_bits  # noqa: E402

GGUF_NAMES = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output", "w_gate": "ffn_gate",
              "w_up": "ffn_up", "w_down": "ffn_down"}


def _gguf_name(name: str) -> str:
    if name.startswith("blk."):
        _, i, lin = name.split(".", 2)
        return f"blk.{i}.{GGUF_NAMES[lin]}.weight"
    return f"{name}.weight"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    hf = write_tiny_hf(d / "hf", vocab=512, seed=1)
    return {"hf": hf, "gguf": write_tiny_gguf(write_tiny_hf(d / "hf_full", seed=2), d / "tiny.gguf"),
            "other": write_tiny_hf(d / "hf_other", vocab=512, seed=3)}


@pytest.fixture(scope="module")
def tiny_hf(tiny):
    return load_model(tiny["hf"])


# --- corpus --------------------------------------------------------------------------------------------------


def test_corpus_is_deterministic_disjoint_prose():
    cal, ev = corpus.docstrings("calibration"), corpus.docstrings("evaluation")
    assert len(cal) > 200 and len(ev) > 100
    assert set(corpus.modules("calibration")).isdisjoint(corpus.modules("evaluation"))
    assert not set(cal) & set(ev)
    assert all(len(d.split()) >= corpus.MIN_WORDS for d in cal + ev)
    assert all(">>>" not in d for d in ev)
    assert corpus.docstrings("evaluation") == ev
    text = corpus.corpus_text("evaluation", max_chars=5000)
    assert 0 < len(text) <= 5000 and text.count(" the ") > 5
    with pytest.raises(RomaError, match="unknown corpus split"):
        corpus.docstrings("train")


def test_distillation_text_interleaves_torch_docstrings_and_never_holds_evaluation_text():
    pytest.importorskip("torch")
    cal, held_out = corpus.docstrings("calibration"), set(corpus.docstrings("evaluation"))
    assert list(corpus.distillation_texts("stdlib")) == cal
    wide = list(corpus.distillation_texts("stdlib+torch"))
    assert wide[:len(cal)] == list(itertools.islice(corpus.distillation_texts("stdlib+torch"), len(cal)))
    assert wide[0] == cal[0] and wide[2] == cal[1] and wide[1] not in cal  # one from each source in turn
    assert set(cal) <= set(wide) and not held_out & set(wide)
    assert sum(map(len, wide)) > 3 * sum(map(len, cal))  # torch's docstrings are most of it
    assert all(len(d.split()) >= corpus.MIN_WORDS and d.isascii() for d in wide)
    with pytest.raises(RomaError, match="unknown distillation text"):
        next(corpus.distillation_texts("wiki"))


# --- quantizers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
def test_rtn_codes_are_nearest_for_the_fp16_scale_and_minimum(bits, group):
    rng = np.random.default_rng(bits * group)
    w = (rng.standard_normal((16, 256)) * 0.05).astype(np.float32)
    q = quantize_rtn(w, bits, group)
    assert q.bits == bits and q.group == group and q.codes.max() < 2 ** bits
    d = np.repeat(q.scales.astype(np.float32), group, axis=1)
    m = np.repeat(q.minimums.astype(np.float32), group, axis=1)
    err = np.abs(q.dequantize() - w)
    # Every code is the nearest one for the stored (fp16) d and m: no other code is closer.
    for delta in (-1, 1):
        alt = np.clip(q.codes.astype(np.int32) + delta, 0, 2 ** bits - 1)
        assert np.all(err <= np.abs(d * alt + m - w) + 1e-7)
    # ...and the searched scale/minimum never fit a group worse than its plain min/max range does,
    # with a uniform or an importance-weighted error.
    imp = rng.uniform(0.1, 10, 256).astype(np.float32)
    g = w.reshape(16, -1, group)
    for weights, qq in ((None, q), (imp, quantize_rtn(w, bits, group, importance=imp))):
        d0, m0 = group_params(g.min(-1), g.max(-1), bits)
        plain = d0[..., None].astype(np.float32) * codes_for(g, d0[..., None], m0[..., None], bits) + m0[..., None]
        iw = 1.0 if weights is None else weights.reshape(-1, group)
        e_plain = (((plain - g) ** 2) * iw).sum(-1)
        e_fit = (((qq.dequantize().reshape(g.shape) - g) ** 2) * iw).sum(-1)
        assert np.all(e_fit <= e_plain * (1 + 1e-5) + 1e-12)
        if bits <= 3:
            assert e_fit.sum() < 0.95 * e_plain.sum()


def test_rtn_constant_groups_and_validation():
    w = np.zeros((4, 64), np.float32)
    w[1] = 0.25
    q = quantize_rtn(w, 2, 32)
    np.testing.assert_array_equal(q.dequantize(), w)
    with pytest.raises(RomaError, match="5-bit"):
        quantize_rtn(w, 5, 32)
    with pytest.raises(RomaError, match="group size 48"):
        quantize_rtn(w, 4, 48)
    with pytest.raises(RomaError, match="blk.3.wq.*not a multiple of the group size 128"):
        quantize_rtn(w, 4, 128, name="blk.3.wq")
    with pytest.raises(RomaError, match="NaN"):
        quantize_rtn(np.full((2, 32), np.nan, np.float32), 4, 32)
    with pytest.raises(RomaError, match="unknown quantization method"):
        quantize_tensor(w, 4, 32, "awq")


def _hessian(rng, n, cols):
    mix = np.eye(cols) + 0.4 * rng.standard_normal((cols, cols))
    x = (rng.standard_normal((n, cols)) * np.linspace(0.2, 3, cols)) @ mix
    return (x.T @ x).astype(np.float64)


@pytest.mark.parametrize("bits,group", [(2, 32), (3, 64), (4, 128)])
def test_gptq_beats_rtn_on_calibrated_output_error(bits, group):
    rng = np.random.default_rng(bits)
    w = (rng.standard_normal((64, 256)) * 0.05).astype(np.float32)
    h = _hessian(rng, 1024, 256)
    rtn = quantize_rtn(w, bits, group)
    gq = quantize_gptq(w, h, bits, group)
    assert gq.bits == bits and gq.group == group and gq.codes.max() < 2 ** bits
    assert output_error(w, gq, h) < 0.8 * output_error(w, rtn, h)


def test_gptq_handles_dead_inputs_and_needs_a_hessian():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((8, 64)) * 0.05).astype(np.float32)
    h = _hessian(rng, 256, 64)
    h[5, :] = h[:, 5] = 0
    q = quantize_gptq(w, h, 4, 32)
    assert np.all(np.isfinite(q.dequantize()))
    with pytest.raises(RomaError, match="Hessian"):
        quantize_tensor(w, 4, 32, "gptq", None, "blk.0.wq")
    with pytest.raises(RomaError, match="Hessian shape"):
        quantize_gptq(w, h[:32, :32], 4, 32)


def _on_q8_grid(q: QuantizedMatrix) -> bool:
    """Every scale an unsigned and every minimum a signed 8-bit multiple of its row's power of two."""
    ed, em = q8_exponents(q.scales, q.minimums)
    sd = q.scales.astype(np.float64) / np.ldexp(1.0, ed)
    sm = q.minimums.astype(np.float64) / np.ldexp(1.0, em)
    return (Q8_EXP_MIN <= ed.min() and max(ed.max(), em.max()) <= Q8_EXP_MAX and np.all(sd == np.rint(sd))
            and np.all(sm == np.rint(sm)) and sd.min() >= 0 and sd.max() <= 255 and -128 <= sm.min()
            and sm.max() <= 127)


@pytest.mark.parametrize("bits,group", [(2, 32), (3, 32), (3, 64), (4, 128)])
def test_q8_scales_sit_on_their_grid_and_cost_little(bits, group):
    rng = np.random.default_rng(bits + group)
    w = (rng.standard_normal((64, 256)) * np.linspace(0.01, 0.2, 64)[:, None]).astype(np.float32)
    w[3] = 0  # an all-zero row takes the smallest exponents
    h = _hessian(rng, 1024, 256)
    for quantize in (lambda s: quantize_rtn(w, bits, group, scales=s),
                     lambda s: quantize_gptq(w, h, bits, group, scales=s)):
        fp16, q8 = quantize("fp16"), quantize("q8")
        assert q8.scale_format == "q8" and _on_q8_grid(q8) and not _on_q8_grid(fp16)
        assert q8.bits_per_weight == bits + 16 / group + 16 / 256 < fp16.bits_per_weight == bits + 32 / group
        # 8 significant bits of a row-wide step lose little against a free fp16 per group
        assert output_error(w, q8, h) < 1.05 * output_error(w, fp16, h)
    np.testing.assert_array_equal(quantize_rtn(w, bits, group, scales="q8").dequantize()[3], 0)
    with pytest.raises(RomaError, match="unknown scale format 'q4'"):
        quantize_rtn(w, bits, group, scales="q4")


def test_passthrough_is_the_same_object_and_requantization_is_not():
    rng = np.random.default_rng(0)
    q = quantize_rtn(rng.standard_normal((8, 64)).astype(np.float32), 4, 32)
    same, how = quantize_tensor(q, 4, 32)
    assert same is q and how == "passthrough"
    other, how = quantize_tensor(q, 4, 64)
    assert other is not q and how == "rtn" and other.group == 64
    compact, how = quantize_tensor(q, 4, 32, scales="q8")  # the same width in another scale format
    assert how == "rtn" and compact.scale_format == "q8"


# --- LoftQ and mixed precision --------------------------------------------------------------------------------


def test_loftq_lora_reduces_the_error_of_the_base():
    rng = np.random.default_rng(0)
    u = rng.standard_normal((96, 8)) @ rng.standard_normal((8, 128))  # a low-rank structure plus noise
    w = (0.05 * (u + 0.3 * rng.standard_normal((96, 128)))).astype(np.float32)
    q0 = quantize_rtn(w, 2, 32)
    q, a, b = loftq(w, lambda x: quantize_rtn(x, 2, 32), rank=8, iters=3)
    assert a.shape == (8, 128) and b.shape == (96, 8)
    base = np.linalg.norm(w - q0.dequantize())
    assert np.linalg.norm(w - q.dequantize() - b @ a) < 0.9 * base
    with pytest.raises(RomaError):
        loftq(w, lambda x: quantize_rtn(x, 2, 32), rank=0)


def test_activation_weighted_loftq_lowers_the_output_error():
    """With the input Hessian, the low-rank step minimises ||(W - Q - B A) X^T|| over the calibration inputs:
    lower than plain LoftQ's on those inputs, at a higher weight-space error."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4000, 128)) * np.exp(1.5 * rng.standard_normal(128))  # unequal input channels
    w = (0.05 * rng.standard_normal((96, 128))).astype(np.float32)
    quantizer = lambda m: quantize_rtn(m, 2, 32)  # noqa: E731

    def errors(q, a, b):
        r = w - q.dequantize() - b @ a
        return np.linalg.norm(r @ x.T), np.linalg.norm(r)

    plain_out, plain_w = errors(*loftq(w, quantizer, rank=8))
    aw_out, aw_w = errors(*loftq(w, quantizer, rank=8, hessian=x.T @ x))
    assert aw_out < 0.8 * plain_out and aw_w > plain_w, (aw_out, plain_out, aw_w, plain_w)


def test_mixed_precision_greedy_meets_the_budget():
    # settings (width, group) with their bits per weight; G32 costs 0.5 more than G64
    bpw = {(2, 64): 2.5, (2, 32): 3.0, (3, 64): 3.5, (3, 32): 4.0, (4, 64): 4.5, (8, 64): 8.5}
    sens = {"a": {(2, 64): 1.0, (2, 32): 0.6, (3, 64): 0.3, (3, 32): 0.2, (4, 64): 0.1, (8, 64): 0.0},
            "b": {(2, 64): 0.05, (2, 32): 0.04, (3, 64): 0.02, (3, 32): 0.015, (4, 64): 0.01, (8, 64): 0.0},
            "c": {(2, 64): 2.0, (2, 32): 1.5, (3, 64): 0.5, (3, 32): 0.3, (4, 64): 0.2, (8, 64): 0.0}}
    cost = {n: (1000, bpw) for n in sens}
    choice = assign_settings(sens, cost, 3.5)
    assert average_bits(choice, cost) <= 3.5 + 1e-9
    assert choice["b"] == (2, 64) and choice["c"][0] >= choice["a"][0] >= 3
    assert set(assign_settings(sens, cost, 9.0).values()) == {(8, 64)}
    # a setting that costs more without lowering the KL is never taken
    sens["b"][(2, 32)] = 0.05
    assert assign_settings(sens, cost, 3.5)["b"] == (2, 64)
    with pytest.raises(RomaError, match="below the narrowest"):
        assign_settings(sens, cost, 2.4)


# --- builds ----------------------------------------------------------------------------------------------------


def test_passthrough_build_reproduces_the_gguf_exactly(tiny, tmp_path):
    model = load_model(tiny["gguf"])
    man = compile_model(model, tmp_path / "b", bits=4, group=32, progress=False)
    assert all(t["method"] == "passthrough" for t in man["tensors"].values())
    loaded = load_build(tmp_path / "b")
    lora = loaded.compensation
    assert lora is None
    reader, _ = read_gguf_metadata(tiny["gguf"])
    stored = {t.name: t for t in reader.tensors}
    for name in tensor_names(model.config):
        t = stored[_gguf_name(name)]
        expect = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(
            [int(s) for s in reversed(t.shape)])
        got = loaded.weights.token_embedding if name == "token_embd" else getattr(
            loaded.weights.layers[int(name.split(".")[1])], name.split(".")[2])
        np.testing.assert_array_equal(got.dequantize(), expect.astype(np.float32))
    # and the quant-mode golden model on the build is the golden model on the GGUF, bit for bit
    ids = [5, 17, 300, 4000, 9]
    a = GoldenModel(model, "quant").forward(ids, GoldenModel(model, "quant").new_cache(8), all_logits=True)
    g = GoldenModel(loaded, "quant")
    np.testing.assert_array_equal(g.forward(ids, g.new_cache(8), all_logits=True), a)


def test_smollm2_passthrough_images_match_gguf_dequantize(smollm2, tmp_path):
    from roma_runtime.artifact import brom_image as brom

    model = smollm2
    reader, _ = read_gguf_metadata(resolve_model_path("smollm2-135m"))
    stored = {t.name: t for t in reader.tensors}
    for name in ["blk.0.wq", "blk.29.w_down", "token_embd"]:
        layer = None if name == "token_embd" else model.weights.layers[int(name.split(".")[1])]
        src = model.weights.token_embedding if layer is None else getattr(layer, name.split(".")[2])
        q, how = quantize_tensor(src, src.bits, 32, name=name)
        assert how == "passthrough"
        bin_path = brom.write_image(brom.pack(q), tmp_path, name)[0]
        back = brom.unpack(brom.read_image(bin_path))
        t = stored[_gguf_name(name)]
        expect = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(back.shape)
        np.testing.assert_array_equal(back.codes, q.codes)
        np.testing.assert_array_equal(back.dequantize(), expect.astype(np.float32))


def test_build_folder_manifest_and_header(tiny_hf, tmp_path):
    out = tmp_path / "b"
    man = compile_model(tiny_hf, out, bits=3, group=32, board="kv260", progress=False)
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk["model"]["sha256"] == tiny_hf.identity() == man["model"]["sha256"]
    assert on_disk["quantization"]["bits"] == 3 and on_disk["board"]["name"] == "kv260"
    assert on_disk["plan"]["board"]["name"] == "kv260"
    assert {t["name"] for t in on_disk["plan"]["tensors"]} >= {"layers.0.wq", "token_embedding"}
    assert all(t["placement"] for t in on_disk["tensors"].values())
    assert set(on_disk["tensors"]) == set(tensor_names(tiny_hf.config))
    assert all(t["bits"] == 3 for n, t in on_disk["tensors"].items() if n.startswith("blk."))
    assert on_disk["tensors"]["token_embd"]["bits"] == 8
    for f in ["roma_model.h", "norms.bin", "norms.dat", "blk.0.wq.bin", "blk.1.w_down.dat", "token_embd.bin"]:
        assert f in on_disk["files"] and (out / f).is_file()
    assert not list(out.glob("*.tmp"))
    header = (out / "roma_model.h").read_text()
    for line in ["constexpr int N_LAYERS = 2;", "constexpr int DIM = 64;", "constexpr int FFN_DIM = 128;",
                 "constexpr int N_KV_HEADS = 2;", "constexpr int HEAD_DIM = 16;", "constexpr int VOCAB = 512;",
                 "constexpr int DEFAULT_BITS = 3;", "constexpr int BITS_WQ[N_LAYERS] = {3, 3};",
                 "constexpr int KV_PORT_BITS = 128;",  # the KV260's HP port (boards.json kv_port_bits)
                 "constexpr int KV_PORTS = 1;", "constexpr int KV_SETS = 1;", "#define ROMA_KV_PORTS 1"]:
        assert line in header
    assert on_disk["kv_layout"] == {"ports": 1, "unit": 8, "sets": 1}
    # the board's default LoRA unit (boards.json kv260: 1 slot of rank 8 on wq wv, int8), as roma_model.h gives it
    assert {k: on_disk["lora_unit"][k] for k in ("slots", "rank", "targets", "dtype")} == {
        "slots": 1, "rank": 8, "targets": ["wq", "wv"], "dtype": "int8"}
    for line in ["constexpr int LORA_SLOTS = 1;", "constexpr int LORA_RANK = 8;", "constexpr bool LORA_INT8 = true;",
                 "constexpr bool LORA_TARGET[7] = {true, false, true, false, false, false, false};",
                 "#define ROMA_LORA_ARRAYS 2"]:
        assert line in header
    assert "LOFTQ" not in header and "ROMA_LORA_IMPL " + {"URAM": "uram", "BRAM": "bram"}.get(
        on_disk["lora_unit"]["placement"], "auto") in header
    loaded = load_build(out)
    lora = loaded.compensation
    assert lora is None
    np.testing.assert_array_equal(loaded.weights.layers[1].ffn_norm, tiny_hf.weights.layers[1].ffn_norm)
    assert loaded.weights.layers[0].wq.bits == 3


def test_a_u250_build_splits_its_kv_positions_into_two_sets(tiny_hf, tmp_path):
    """The U250's four KV ports: the tiny model's head of 16 takes one port's lanes, so its DDR KV cache is one port
    and two position sets (kv_layout.KvLayout.for_build), as the manifest and roma_model.h say; a manifest resealed
    with another layout than the header's, or without its sets (a build before them), is refused."""
    from roma_runtime.artifact.build import seal_manifest

    out = tmp_path / "b"
    man = compile_model(tiny_hf, out, bits=4, board="u250", progress=False)
    assert man["kv_layout"] == {"ports": 1, "unit": 16, "sets": 2}
    header = (out / "roma_model.h").read_text()
    lanes = header.index("constexpr int KV_PORT_LANES = 16;")
    assert header.index("constexpr int KV_SETS = 2;") > lanes
    assert not re.search(r"constexpr \w+ \w+", header[lanes + 1:header.index("constexpr int KV_SETS")])  # right after
    assert "#define ROMA_KV_PORTS 4" in header and "constexpr int KV_PORTS = 1;" in header
    for layout, message in [({"ports": 1, "unit": 16, "sets": 1}, "kv_sets = 1, but roma_model.h was generated with "
                                                                   "KV_SETS = 2"),
                            ({"ports": 1, "unit": 16}, "'kv_layout' is not an object"),
                            ({"ports": 1, "unit": 16, "sets": 3}, "'kv_layout' is not an object"),
                            ({"ports": 1, "unit": 16, "sets": True}, "'kv_layout' is not an object")]:
        edited = tmp_path / f"edited{len(list(tmp_path.iterdir()))}"
        shutil.copytree(out, edited)
        manifest = json.loads((edited / MANIFEST).read_text())
        manifest["kv_layout"] = layout
        (edited / MANIFEST).write_text(json.dumps(seal_manifest(manifest)))
        with pytest.raises(RomaError, match=re.escape(message)):
            verify_build(edited)


def test_the_lora_unit_comes_from_the_options_and_holds_the_compensation(tiny_hf, tmp_path):
    from roma_runtime.artifact.lora_unit import LoraUnit, manifest_lora_unit

    out = tmp_path / "b"
    man = compile_model(tiny_hf, out, bits=2, progress=False, lora_rank=4, lora_slots=3, lora_slot_rank=6,
                        lora_targets=["w_down", "wq"], lora_dtype="fp16")
    unit = manifest_lora_unit(man)
    assert unit == LoraUnit(3, 6, ("wq", "w_down"), "fp16")
    # the plan reserved exactly that unit: 3 slots x 2 layers x rank 6 x (64 + 64 + 128 + 64) fp16 values
    # fp16 values of 3 slots x 2 layers at rank 6 on wq and w_down, then per (slot, layer, target) a 16-bit rank and
    # an fp32 scale, and a loaded flag per slot (lora_unit.h)
    values = 2 * 3 * 2 * 6 * (64 + 64 + 128 + 64)
    assert man["plan"]["lora"]["bytes"] == man["lora_unit"]["bytes"] == values + 3 * 2 * 2 * (2 + 4) + 3
    header = (out / "roma_model.h").read_text()
    for line in ["constexpr int LORA_SLOTS = 3;", "constexpr int LORA_RANK = 6;", "constexpr bool LORA_INT8 = false;",
                 "constexpr bool LORA_TARGET[7] = {true, false, false, false, false, false, true};",
                 "#define ROMA_LORA_ARRAYS 1"]:
        assert line in header
    # LoftQ compensates only where the core adds a LoRA: the unit's targets
    assert sorted(load_build(out).compensation.factors) == [(0, "w_down"), (0, "wq"), (1, "w_down"), (1, "wq")]
    # a header that says another unit than the manifest is refused
    (out / "roma_model.h").write_text(header.replace("LORA_RANK = 6;", "LORA_RANK = 7;"))
    with pytest.raises(RomaError, match="lora_rank = 6, but roma_model.h was generated with LORA_RANK = 7"):
        load_build(out, verify=False)
    # what the unit cannot hold is refused before anything is written
    for options, message, hint in [
            (dict(lora_rank=8, lora_slot_rank=6), "does not fit the LoRA unit's slot rank 6", "--lora-slot-rank 8"),
            (dict(lora_rank=2, lora_slots=0), "needs a LoRA slot", "--lora-slots 1"),
            (dict(lora_slots=1, lora_slot_rank=0), "needs a slot rank >= 1", "0 slots"),
            (dict(lora_targets=["wq", "lm_head"]), "unknown LoRA target", "w_down")]:
        with pytest.raises(RomaError, match=message) as e:
            compile_model(tiny_hf, tmp_path / "refused", progress=False, **options)
        assert hint in e.value.hint and not (tmp_path / "refused").exists()


def test_failed_compile_leaves_no_manifest(tiny_hf, tmp_path):
    out = tmp_path / "b"
    compile_model(tiny_hf, out, progress=False)
    with pytest.raises(RuntimeError, match="injected"):
        compile_model(tiny_hf, out, bits=2, progress=False, fail_after="blk.1.wq")
    assert not (out / MANIFEST).exists()
    with pytest.raises(RomaError, match="not a complete build"):
        load_build(out)


def test_another_models_build_is_refused_without_force(tiny, tiny_hf, tmp_path):
    out = tmp_path / "b"
    compile_model(tiny_hf, out, progress=False)
    other = load_model(tiny["other"])
    with pytest.raises(RomaError, match="another model") as e:
        compile_model(other, out, progress=False)
    assert "--force" in str(e.value)
    assert json.loads((out / MANIFEST).read_text())["model"]["sha256"] == tiny_hf.identity()
    compile_model(other, out, force=True, progress=False)
    assert verify_build(out)["model"]["sha256"] == other.identity()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(RomaError, match="not empty"):
        compile_model(tiny_hf, tmp_path / "junk", progress=False)


def test_corrupted_image_is_named(tiny_hf, tmp_path):
    out = tmp_path / "b"
    compile_model(tiny_hf, out, progress=False)
    target = out / "blk.1.wv.bin"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x40
    target.write_bytes(bytes(data))
    with pytest.raises(RomaError, match=r"blk\.1\.wv\.bin is corrupt"):
        load_build(out)
    target.unlink()
    with pytest.raises(RomaError, match=r"blk\.1\.wv\.bin is missing"):
        load_build(out)


def test_bad_board_and_bad_settings(tiny_hf, tmp_path):
    with pytest.raises(RomaError, match="unknown board 'nope'") as e:
        compile_model(tiny_hf, tmp_path / "b", board="nope", progress=False)
    assert "kv260" in str(e.value)
    with pytest.raises(RomaError, match="6-bit"):
        compile_model(tiny_hf, tmp_path / "b", bits=6, progress=False)
    assert not (tmp_path / "b" / MANIFEST).exists()


def test_group_falls_back_per_tensor_to_the_largest_that_divides_the_row(tiny_hf, tmp_path, capsys):
    assert effective_group(576, 128) == 64 and effective_group(1536, 128) == 128 and effective_group(96, 64) == 32
    assert effective_group(576, 32) == 32
    with pytest.raises(RomaError, match="not a multiple of any supported group"):
        effective_group(48, 128)
    # the tiny model: dim 64 (G64), ffn 128 (w_down keeps G128)
    man = compile_model(tiny_hf, tmp_path / "b", bits=4, group=128, progress=False)
    assert "64-wide rows use G64" in capsys.readouterr().err
    q = man["quantization"]
    assert q["group"] == 128 and q["group_fallback"] == {"64": 64} and q["plan_group"] == 64
    groups = {n.split(".", 2)[2]: t["group"] for n, t in man["tensors"].items() if n.startswith("blk.0.")}
    assert groups == {"wq": 64, "wk": 64, "wv": 64, "wo": 64, "w_gate": 64, "w_up": 64, "w_down": 128}
    header = (tmp_path / "b" / "roma_model.h").read_text()
    assert "constexpr int GROUP_W_DOWN[N_LAYERS] = {128, 128};" in header
    assert "constexpr int GROUP_WQ[N_LAYERS] = {64, 64};" in header
    loaded = load_build(tmp_path / "b")
    assert loaded.weights.layers[1].w_down.group == 128 and loaded.weights.layers[1].wq.group == 64


def test_gptq_lora_and_mixed_builds(tiny_hf, tmp_path):
    ref = GoldenModel(tiny_hf, "float")
    ids = list(corpus.corpus_text("evaluation", 200).encode()[:64])  # in-distribution for byte tokens
    r = ref.forward(ids, ref.new_cache(64), all_logits=True)

    def err(out):
        loaded = load_build(out)
        lora = loaded.compensation
        g = GoldenModel(loaded, "quant")
        g.lora = lora
        return float(np.mean((g.forward(ids, g.new_cache(64), all_logits=True) - r) ** 2)), lora

    man = compile_model(tiny_hf, tmp_path / "rtn", bits=2, group=32, progress=False)
    e_rtn, _ = err(tmp_path / "rtn")
    man = compile_model(tiny_hf, tmp_path / "gptq", bits=2, group=32, method="gptq", calib_tokens=512,
                        progress=False)
    assert man["quantization"]["calibration"]["tokens"] == 512
    assert all(t["method"] == "gptq" for n, t in man["tensors"].items() if n.startswith("blk."))
    e_gptq, _ = err(tmp_path / "gptq")
    man = compile_model(tiny_hf, tmp_path / "gptaq", bits=2, group=32, method="gptaq", calib_tokens=512,
                        lora_rank=4, progress=False)
    assert man["quantization"]["calibration"]["gptq"].startswith("sequential and asymmetric")
    assert all(t["method"] == "gptaq+loftq-aw" for n, t in man["tensors"].items() if n.startswith("blk."))
    assert err(tmp_path / "gptaq")[0] < e_rtn
    man = compile_model(tiny_hf, tmp_path / "lora", bits=2, group=32, lora_rank=8, progress=False)
    assert man["lora"]["rank"] == 8 and "lora.safetensors" in man["files"]
    e_lora, lora = err(tmp_path / "lora")
    assert lora is not None and len(lora.factors) == 14
    a, b, s = lora.factors[(1, "w_up")]
    assert a.shape == (8, 64) and b.shape == (128, 8) and s == 1.0
    assert e_gptq < e_rtn and e_lora < e_rtn
    man = compile_model(tiny_hf, tmp_path / "mixed", bits=2, group=64, bits_budget=3.6, calib_tokens=256,
                        progress=False)
    q = man["quantization"]
    assert 3.0 < q["linear_bits_per_weight"] <= 3.6 + 1e-9 and q["bits_budget"] == 3.6
    linears = {n: t for n, t in man["tensors"].items() if n.startswith("blk.")}
    assert len({t["bits"] for t in linears.values()}) > 1
    assert {t["group"] for t in linears.values()} <= {32, 64}
    for n, t in linears.items():  # the chosen setting is one that was priced; the plan counts its group
        assert f"{t['bits']}/{t['group']}" in t["sensitivity"]["settings"]
        assert man["plan"]["quantization"]["per_tensor_groups"]["layers." + n[4:]] == t["group"]
    header = (tmp_path / "mixed" / "roma_model.h").read_text()
    wq = [man["tensors"][f"blk.{i}.wq"]["bits"] for i in range(2)]
    assert f"constexpr int BITS_WQ[N_LAYERS] = {{{wq[0]}, {wq[1]}}};" in header


def test_compile_command(tiny_hf, tmp_path, capsys):
    from roma_runtime.commands import compile as cmd
    import argparse

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    args = p.parse_args(["--model", str(tiny_hf.source), "--bits", "4", "--group", "64", "--out",
                         str(tmp_path / "b"), "--json", "--board", "kv260", "--no-footprint"])
    assert cmd.run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["bits"] == 4 and summary["group"] == 64 and summary["linear_bits_per_weight"] == 4.5
    assert "mixed_settings" not in summary
    args = p.parse_args(["--model", str(tiny_hf.source), "--group", "64", "--bits-budget", "3.5", "--calib-tokens",
                         "256", "--out", str(tmp_path / "m"), "--no-footprint"])
    assert cmd.run(args) == 0
    line = capsys.readouterr().out.splitlines()[0]  # "built ...: ... at mixed 5 x 2/64, 9 x 3/64 (bits/group)"
    counts = re.findall(r"(\d+) x ([2348])/(32|64)", line)
    assert "at mixed" in line and sum(int(n) for n, _, _ in counts) == 14, line
    for method, tokens in (("gptq", 4096), ("gptaq", 32768)):  # GPTAQ overfits with GPTQ's calibration
        args = p.parse_args(["--model", str(tiny_hf.source), "--bits", "3", "--method", method, "--out",
                             str(tmp_path / method), "--no-footprint"])
        assert cmd.run(args) == 0
        calibration = json.loads((tmp_path / method / MANIFEST).read_text())["quantization"]["calibration"]
        assert calibration["tokens"] == tokens


def test_layerwise_forward_is_the_golden_float_forward(tiny_hf):
    from roma_runtime.compiler.quantization.calibrate import LayerwiseForward

    windows = corpus.token_windows(tiny_hf, "calibration", 100, 50)
    fw = LayerwiseForward(tiny_hf, windows)
    xs = fw.inputs
    for li, layer in enumerate(tiny_hf.weights.layers):
        xs = fw.block(li, xs, lambda kind, names, inputs, layer=layer: {
            n: np.asarray(getattr(layer, n), np.float32).T for n in names})
    g = GoldenModel(tiny_hf, "float")
    for ids, z in zip(windows, fw.logits(xs)):
        np.testing.assert_allclose(z, g.forward(ids, g.new_cache(len(ids)), all_logits=True), rtol=1e-4,
                                   atol=1e-4)


def test_drift_correction_maps_quantized_inputs_to_float_outputs():
    from roma_runtime.compiler.quantization.calibrate import drift_correction

    rng = np.random.default_rng(5)
    w = rng.standard_normal((24, 16)).astype(np.float32)
    xf = rng.standard_normal((400, 16))
    distortion = np.eye(16) + 0.2 * rng.standard_normal((16, 16))
    xq = xf @ distortion + 0.01 * rng.standard_normal(xf.shape)  # what the quantized model feeds it instead
    same = w + w @ drift_correction(xf.T @ xf, np.zeros((16, 16)))
    np.testing.assert_allclose(same, w, rtol=1e-6)  # inputs that agree: the target is the layer itself
    target = w + w @ drift_correction(xq.T @ xq, xq.T @ (xf - xq))
    miss = lambda t: float(np.sum((xq @ t.T - xf @ w.T) ** 2))  # noqa: E731
    assert miss(target) < 0.05 * miss(w)  # it undoes the drift that the inputs show


def test_sequential_calibration_sees_the_quantized_inputs(tiny_hf):
    from roma_runtime.compiler.quantization.calibrate import collect_hessians, quantize_sequentially
    from roma_runtime.compiler.quantization.quantize import quantize_tensor

    windows = corpus.token_windows(tiny_hf, "calibration", 128, 64)
    seen = []

    def quantize(key, target, h):
        seen.append((key, target, h))
        return quantize_tensor(target, 2, 32, "gptq", h, "t")[0].dequantize()

    assert quantize_sequentially(tiny_hf, windows, quantize) == 128
    assert [k for k, _, _ in seen] == [(i, n) for i in range(2) for n in LayerWeights.LINEAR]
    one_pass = collect_hessians(tiny_hf, windows=windows)
    layers = tiny_hf.weights.layers
    key, target, h = seen[0]  # layer 0's first stage: nothing quantized before it
    np.testing.assert_allclose(h, one_pass[key], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(target, np.asarray(layers[0].wq), rtol=1e-6)
    for (li, n), target, h in seen[3:]:  # every later stage reads drifted inputs and corrects for them
        assert not np.allclose(h, one_pass[(li, n)], rtol=1e-3)
        assert not np.allclose(target, np.asarray(getattr(layers[li], n)), rtol=1e-3)


def test_measured_sensitivity_orders_widths(tiny_hf):
    from roma_runtime.compiler.build import measure_sensitivity
    from roma_runtime.compiler.quantization.mixed import mixed_settings
    from roma_runtime.compiler.quantization.calibrate import collect_hessians

    assert mixed_settings(96, 128) == [(2, 32), (3, 32), (4, 32), (8, 32)]  # 96 = 3 x 32: G32 only
    assert mixed_settings(128, 64) == [(2, 32), (2, 64), (3, 32), (3, 64), (4, 32), (4, 64), (8, 64)]
    hessians = collect_hessians(tiny_hf, 128, 64, progress=False)
    sens = measure_sensitivity(tiny_hf, 64, hessians, tokens=64, window=64)
    assert set(sens) == {(i, n) for i in range(2) for n in LayerWeights.LINEAR}
    for entry in sens.values():
        ref, priced = entry["reference"], entry["settings"]
        assert (ref["bits"], ref["group"]) == (3, 64) and 0 <= ref["top1"] <= 1
        assert priced[(3, 64)]["kl"] == pytest.approx(ref["kl"])  # the measured point, scaled by 1
        assert priced[(2, 64)]["kl"] > priced[(3, 64)]["kl"] > priced[(4, 64)]["kl"] > 0
        assert priced[(2, 32)]["error"] < priced[(2, 64)]["error"]  # smaller groups fit closer
        assert priced[(8, 64)] == {"kl": 0.0, "error": 0.0}


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_float_literals_in_headers_and_dat_files_are_cxx14_and_exact(tmp_path):
    """norms.dat and roma_model.h write fp32 values as C++ literals: every value must read back to the same bits
    under C++14, the language Vitis HLS compiles (a norm weight of exactly 2 was written as `2f`, not C++)."""
    from roma_runtime.artifact.model_header import c_float

    values = np.array([2.0, 1.9375, -0.0, 1e-30, 3.4028235e38, 1.4e-45, 0.1, -7.0], np.float32)
    source = ("#include <cstdio>\nstatic const float v[] = {" + ", ".join(c_float(v) for v in values) +
              "};\nint main() { return fwrite(v, sizeof v, 1, stdout) == 1 ? 0 : 1; }\n")
    (tmp_path / "t.cpp").write_text(source)
    subprocess.run(["g++", "-std=c++14", "-pedantic-errors", "-Wall", "-Werror", str(tmp_path / "t.cpp"),
                    "-o", str(tmp_path / "t")], check=True)
    out = subprocess.run([str(tmp_path / "t")], capture_output=True, check=True).stdout
    assert out == values.tobytes()
