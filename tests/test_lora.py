"""LoRA adapters against the real peer (PEFT on transformers): reading, the packed memory format, combining,
and resident slots. Adapters are made by PEFT itself on the tiny random LLaMA (tests/tiny_models.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import cli_env
from tiny_models import peft_with_random_lora, save_peft
from roma_runtime import RomaError
from roma_runtime import lora as L
from roma_runtime.artifact import lora_image
from roma_runtime.golden import GoldenModel
from roma_runtime.model.config import linear_shapes
from roma_runtime.model.loader import load_model
from roma_runtime.model.safetensors_io import read_safetensors

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

IDS = [1, 504, 3458, 282, 4649, 314, 90, 2000, 77, 12, 9000]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Float path vs PEFT: the same fp32 weights and factors, only summation order differs (measured ~2e-5 on logits
# of max ~37, i.e. ~6e-7 relative); 1e-4 of the largest logit leaves room for BLAS differences.
FLOAT_RTOL = 1e-4


def run_peft(hf_folder, out, seed=1, std=0.1, run=True, **config):
    """A PEFT LoRA on the transformers model with random non-zero A and B, saved with save_pretrained.
    Returns (folder, logits with the adapter, logits without) from PEFT itself."""
    pm = peft_with_random_lora(hf_folder, seed, std=std, **config)
    with torch.no_grad():
        pm.eval()
        ids = torch.tensor([IDS])
        with_adapter = pm(ids).logits[0].numpy() if run else None
        with pm.disable_adapter():
            without = pm(ids).logits[0].numpy() if run else None
    save_peft(pm, out)
    return out, with_adapter, without


def golden_logits(model, adapter=None, mode="float"):
    g = GoldenModel(model, mode)
    g.lora = adapter
    return g.forward(IDS, g.new_cache(32), all_logits=True)


@pytest.fixture(scope="module")
def models(tiny_models):
    return {k: load_model(v) for k, v in tiny_models.items()}


@pytest.fixture(scope="module")
def plain(tiny_models, tmp_path_factory):
    """All 7 linears, r 8, alpha 16 (scale 2)."""
    return run_peft(tiny_models["hf"], tmp_path_factory.mktemp("lora") / "plain", seed=1, r=8, lora_alpha=16,
                    target_modules=ALL)


@pytest.fixture(scope="module")
def second(tiny_models, tmp_path_factory):
    """Another adapter on a subset, with rsLoRA: for swapping and concatenation."""
    return run_peft(tiny_models["hf"], tmp_path_factory.mktemp("lora") / "second", seed=2, r=4, lora_alpha=8,
                    use_rslora=True, target_modules=["q_proj", "v_proj", "down_proj"])


# --- agreement with PEFT ----------------------------------------------------------------------------------

VARIANTS = {
    "plain": dict(r=8, lora_alpha=16, target_modules=ALL),
    "rslora": dict(r=8, lora_alpha=16, use_rslora=True, target_modules=ALL),
    # rank/alpha per module; the keys match the end of the module name, one is layer-specific
    "rank_pattern": dict(r=8, lora_alpha=16, target_modules="model\\.layers\\.\\d+\\.(self_attn\\.(q|k|o)_proj|mlp\\.down_proj)",
                         rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 12},
                         alpha_pattern={"k_proj": 4}),
    "rslora_rank_pattern": dict(r=6, lora_alpha=12, use_rslora=True, target_modules=["k_proj", "up_proj"],
                                rank_pattern={"up_proj": 2}),
    # PEFT switches fan_in_fan_out off for nn.Linear targets (and saves False); see the test for True
    "fan_in_fan_out": dict(r=8, lora_alpha=8, fan_in_fan_out=True, target_modules=["q_proj", "k_proj", "gate_proj"]),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_float_path_matches_peft(tiny_models, models, tmp_path, variant):
    folder, ref, base = run_peft(tiny_models["hf"], tmp_path / variant, **VARIANTS[variant])
    assert np.abs(ref - base).max() > 1.0  # the adapter matters
    for source in ("hf", "f32"):  # the F32 GGUF has its Q/K rows permuted: so must the adapter's B be
        adapter = L.read_peft_adapter(folder, models[source])
        ours = golden_logits(models[source], adapter.to_golden())
        assert np.abs(ours - ref).max() < FLOAT_RTOL * np.abs(ref).max(), (source, np.abs(ours - ref).max())
        assert (ours.argmax(-1) == ref.argmax(-1)).all()
    cfg = VARIANTS[variant]
    if variant == "rank_pattern":
        assert adapter.ranks[(0, "wq")] == 4 and adapter.ranks[(1, "w_down")] == 12
        assert adapter.ranks[(0, "w_down")] == 8 and (0, "wv") not in adapter.factors
        assert adapter.factors[(0, "wk")][2] == 4 / 8 and adapter.factors[(0, "wq")][2] == 16 / 4
    if variant == "fan_in_fan_out":
        # A config that says True (hand-edited or from an older PEFT) changes nothing: PEFT's factors are
        # nn.Linear weights ([r, in], [out, r]) either way; only a Conv1D *base* weight is stored transposed.
        flipped = edit_config(folder, tmp_path / "flipped", fan_in_fan_out=True)
        again = L.read_peft_adapter(flipped, models["f32"])
        assert again.summary()["fan_in_fan_out"] is True
        for key, (a, b, s) in adapter.factors.items():
            np.testing.assert_array_equal(again.factors[key][0], a)
            np.testing.assert_array_equal(again.factors[key][1], b)
    if cfg.get("use_rslora"):
        assert adapter.rslora and adapter.factors[(0, "wk")][2] == pytest.approx(cfg["lora_alpha"] / np.sqrt(cfg["r"]))


def test_quant_path_moves_logits_like_peft(tiny_models, models, plain):
    """Q4_1 base in quant mode: the base differs from PEFT's by weight and activation quantization, so logits
    cannot match, but the change the adapter makes must point the same way. Measured cosine 0.977 (per token
    0.93..0.995) on this tiny random model, whose attention is peaky and so sensitive to quantization; an
    unrelated adapter gives ~0. Threshold 0.95."""
    folder, ref, base = plain
    model = models["q4_1"]
    ours = golden_logits(model, None, "quant")
    ours_with = golden_logits(model, L.read_peft_adapter(folder, model).to_golden(), "quant")

    def cos(a, b):
        a, b = a.ravel(), b.ravel()
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    assert cos(ours_with - ours, ref - base) > 0.95
    other = L.Adapter.from_factors("other", model, {
        k: (np.random.default_rng(3).standard_normal(a.shape).astype(np.float32) * 0.1, b[::-1].copy(), s)
        for k, (a, b, s) in L.read_peft_adapter(folder, model).factors.items()})
    assert abs(cos(golden_logits(model, other.to_golden(), "quant") - ours, ref - base)) < 0.5


# --- packing ----------------------------------------------------------------------------------------------


def test_pack_layout_and_roundtrip(models, plain, second):
    model = models["hf"]
    adapter = L.read_peft_adapter(plain[0], model)
    small = L.read_peft_adapter(second[0], model)
    p = L.pack(small, "int8", slot_rank=16, scale_dtype="fp32")
    buf = p.buffer
    assert bytes(buf[:8]) == b"ROMALORA" and p.nbytes == len(buf)
    n_layers = model.config.n_layers
    # directory entry for layer 1 wv (present) and layer 1 wk (absent)
    e = lora_image._ENTRY.unpack_from(buf, 64 + (1 * 7 + 2) * 32)
    rank, inp, out, scale, oa, osa, ob, osb = e
    assert (rank, inp, out) == (4, 64, 32) and scale == pytest.approx(8 / 2)
    assert all(o % 64 == 0 for o in (oa, osa, ob, osb))
    codes_a = buf[oa:oa + 16 * 64].view(np.int8).reshape(16, 64)
    assert not codes_a[4:].any() and codes_a[:4].any()  # rows past the rank are zero padding
    codes_b = buf[ob:ob + 32 * 16].view(np.int8).reshape(32, 16)
    assert not codes_b[:, 4:].any() and np.abs(codes_b).max() == 127
    assert lora_image._ENTRY.unpack_from(buf, 64 + (1 * 7 + 1) * 32)[:4] == (0, 64, 32, 0.0)
    assert p.nbytes == lora_image.packed_size(n_layers, linear_shapes(model.config), ["wq", "wv", "w_down"] * 2, 16,
                                     "int8", "fp32")
    assert L.slot_bytes(model, 16, "int8", "fp32") >= p.nbytes

    for dtype, scale_dtype in [("fp16", "fp16"), ("int8", "fp16"), ("int8", "fp32")]:
        packed = L.pack(adapter, dtype, slot_rank=64, scale_dtype=scale_dtype)
        back = packed.unpack()
        assert back.ranks == adapter.ranks and back.n_layers == adapter.n_layers and back.shapes == adapter.shapes
        for key, (a, b, s) in adapter.factors.items():
            a2, b2, s2 = back.factors[key]
            assert s2 == s
            for x, x2 in ((a, a2), (b, b2)):
                if dtype == "fp16":  # round to nearest: 2^-11 relative, or half the subnormal step 2^-24
                    assert (np.abs(x2 - x) <= np.maximum(np.abs(x) * 2.0 ** -11, 2.0 ** -25)).all()
                else:  # int8 per row: error <= half a step; the step (scale) is at most max|row|/127 rounded up
                    step = np.abs(x).max(axis=1, keepdims=True) / 127 * (1 + 2.0 ** -10)
                    assert (np.abs(x2 - x) <= step / 2 + 1e-9).all()
        # packing what was unpacked gives the same bytes: the stored values are representable exactly
        np.testing.assert_array_equal(L.pack(back, dtype, 64, scale_dtype).buffer, packed.buffer)


def test_packed_adapter_stays_close_to_unpacked(models, plain):
    """Logits with the stored factors vs with the fp32 factors, relative to the size of the adapter's effect.
    Measured: fp16 7e-4, int8 1.4e-2 (fp16 scales) / 1.1e-2 (fp32 scales). Tolerances 3e-3 and 4e-2."""
    model = models["hf"]
    adapter = L.read_peft_adapter(plain[0], model)
    base = golden_logits(model)
    exact = golden_logits(model, adapter.to_golden())
    effect = np.abs(exact - base).max()
    for dtype, scale_dtype, tol in [("fp16", "fp16", 3e-3), ("int8", "fp16", 4e-2), ("int8", "fp32", 4e-2)]:
        stored = golden_logits(model, L.pack(adapter, dtype, 64, scale_dtype).to_golden())
        assert np.abs(stored - exact).max() < tol * effect, (dtype, scale_dtype)
        assert (stored.argmax(-1) == exact.argmax(-1)).all()


def test_pack_refuses_rank_above_slot(models, plain):
    adapter = L.read_peft_adapter(plain[0], models["hf"])
    with pytest.raises(RomaError, match="has rank 8, above the LoRA slot rank 4"):
        L.pack(adapter, "fp16", slot_rank=4)
    with pytest.raises(RomaError, match="unsupported LoRA storage type 'fp8'"):
        L.pack(adapter, "fp8")


# --- concatenation ----------------------------------------------------------------------------------------


class Both:
    """Applies two golden adapters at once (the reference for concat)."""

    def __init__(self, *adapters):
        self.adapters = adapters

    def delta(self, key, x):
        parts = [d for d in (a.delta(key, x) for a in self.adapters) if d is not None]
        return sum(parts) if parts else None


def test_concat_equals_applying_both(models, plain, second):
    from roma_runtime.compiler.quantization.loftq import low_rank

    model = models["q4_1"]
    task = L.read_peft_adapter(plain[0], model)
    rsl = L.read_peft_adapter(second[0], model)
    # a quantization-compensating adapter (scale 1, rank 4) of the ROM base, on two linears
    w = model.weights.layers[0]
    comp = L.Adapter.from_factors("comp", model, {
        (0, "w_down"): (*low_rank(np.random.default_rng(0).standard_normal(w.w_down.shape) * 0.05, 4), 1.0),
        (1, "wq"): (*low_rank(np.random.default_rng(1).standard_normal(w.wq.shape) * 0.05, 4), 0.5)})
    for a, b in [(task, comp), (task, rsl)]:
        both = L.concat(a, b)
        assert both.ranks[(0, "w_down")] == a.ranks[(0, "w_down")] + b.ranks[(0, "w_down")]
        assert all(s == 1.0 for _, _, s in both.factors.values())
        got = golden_logits(model, both.to_golden(), "quant")
        ref = golden_logits(model, Both(a.to_golden(), b.to_golden()), "quant")
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
        assert (got.argmax(-1) == ref.argmax(-1)).all()
    other = L.Adapter("x", {}, 3, dict(task.shapes))
    with pytest.raises(RomaError, match="are for different models"):
        L.concat(task, other)


# --- slots ------------------------------------------------------------------------------------------------


def corrupt_copy(src, dst, how):
    shutil.copytree(src, dst)
    st = dst / "adapter_model.safetensors"
    cfg_path = dst / "adapter_config.json"
    if how == "truncated":
        st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])
    elif how == "dora":
        cfg = json.loads(cfg_path.read_text())
        cfg["use_dora"] = True
        cfg_path.write_text(json.dumps(cfg))
    elif how == "json":
        cfg_path.write_text("{\"r\": 8, ")
    return dst


def test_slots_swap_matches_fresh_models(models, plain, second):
    model = models["q4_1"]
    slots = L.LoraSlots(model, capacity=2, slot_rank=16, dtype="int8")
    assert slots.load("task", plain[0]) == 0
    assert slots.load("second", second[0]) == 1
    assert slots.names() == ["task", "second"] and slots.active is None and slots.golden_adapter() is None
    fresh = {name: golden_logits(model, L.pack(L.read_peft_adapter(f, model), "int8", 16).to_golden(), "quant")
             for name, f in (("task", plain[0]), ("second", second[0]))}
    fresh[None] = golden_logits(model, None, "quant")
    g = GoldenModel(model, "quant")
    for name in ["task", "second", None, "second", "task"]:
        slots.activate(name)
        slots.apply_to(g)
        assert slots.active == name
        np.testing.assert_array_equal(g.forward(IDS, g.new_cache(32), all_logits=True), fresh[name])
    assert slots.last_swap_seconds is not None and slots.last_swap_seconds < 0.01
    assert slots.last_load_seconds is not None
    with pytest.raises(RomaError, match=r"all 2 LoRA slots are in use \(task, second\)"):
        slots.load("third", second[0])
    slots.unload("task")  # the active one: afterwards no adapter is active
    assert slots.active is None and slots.names() == ["second"]
    assert slots.load("third", second[0]) == 0


@pytest.mark.parametrize("how,message", [
    ("truncated", "is truncated"),
    ("dora", "uses DoRA"),
    ("json", "is not valid JSON"),
    ("shapes", "tensor base_model.model.model.layers.0.mlp.down_proj.lora_A.weight has shape (8, 96)"),
    ("rank", "has rank 8, above the LoRA slot rank 6"),
])
def test_failed_load_changes_nothing(tiny_models, models, plain, second, tmp_path, how, message):
    model = models["hf"]
    slots = L.LoraSlots(model, capacity=3, slot_rank=8)
    slots.load("a", second[0])
    slots.load("b", plain[0])
    slots.activate("a")
    before = (slots.names(), slots.active, slots.version, slots.golden_adapter(), slots.status(),
              slots.packed("b").buffer.copy())
    if how == "shapes":  # an adapter made for another model (FFN 96 instead of 128)
        from tiny_models import write_tiny_hf

        other = write_tiny_hf(tmp_path / "other", ffn_dim=96, vocab=300)
        bad = run_peft(other, tmp_path / "bad", run=False, r=8, lora_alpha=8, target_modules=["down_proj"])[0]
    elif how == "rank":
        slots = L.LoraSlots(model, capacity=3, slot_rank=6)
        slots.load("a", second[0])
        slots.activate("a")
        before = (slots.names(), slots.active, slots.version, slots.golden_adapter(), slots.status(), None)
        bad = plain[0]
    else:
        bad = corrupt_copy(plain[0], tmp_path / "bad", how)
    for name in ("new", "b"):  # as a new name, and as a replacement of a resident one
        if how == "rank" and name == "b":
            continue
        with pytest.raises(RomaError, match=message.replace("(", r"\(").replace(")", r"\)")):
            slots.load(name, bad)
        after = (slots.names(), slots.active, slots.version, slots.golden_adapter(), slots.status())
        assert after[:4] == before[:4] and after[4] == before[4]
        if before[5] is not None:
            np.testing.assert_array_equal(slots.packed("b").buffer, before[5])


# --- refusals ---------------------------------------------------------------------------------------------


def edit_config(src, dst, **changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(changes)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


def test_refusals_name_the_problem(tiny_models, models, plain, tmp_path):
    model = models["hf"]
    src = plain[0]

    def refuses(folder, *fragments, **kw):
        with pytest.raises(RomaError) as e:
            L.read_peft_adapter(folder, model, **kw)
        for f in fragments:
            assert f in str(e.value), str(e.value)
        return str(e.value)

    refuses(tmp_path / "nowhere", "no adapter folder at")
    (tmp_path / "empty").mkdir()
    refuses(tmp_path / "empty", "has no adapter_config.json", "hint:")
    binary = tmp_path / "bin"
    binary.mkdir()
    shutil.copy(src / "adapter_config.json", binary)
    (binary / "adapter_model.bin").write_bytes(b"\x80\x02pickle")
    refuses(binary, "adapter_model.bin", "does not read", "safe_serialization=True")
    refuses(corrupt_copy(src, tmp_path / "json", "json"), "adapter_config.json is not valid JSON")
    refuses(edit_config(src, tmp_path / "dora", use_dora=True), "uses DoRA (use_dora: true)", "use_dora=False")
    refuses(edit_config(src, tmp_path / "mts", modules_to_save=["lm_head"]), "full copies of lm_head",
            "modules_to_save")
    refuses(edit_config(src, tmp_path / "bias", bias="all"), "bias 'all'", "bias='none'")
    refuses(edit_config(src, tmp_path / "pissa", init_lora_weights="pissa"), "rewrote the base weights")
    refuses(edit_config(src, tmp_path / "tgt", target_modules=["q_proj", "embed_tokens"]),
            "targets embed_tokens", "only the 7")
    refuses(edit_config(src, tmp_path / "rx", target_modules=".*(q_proj|lm_head)"), "targets lm_head")
    refuses(edit_config(src, tmp_path / "r", r=16), "has rank 8, but adapter_config.json gives", "rank 16")
    refuses(src, "above the LoRA slot rank 4", "rank <= 4", max_rank=4)

    # a B without its A
    nob = shutil.copytree(src, tmp_path / "nob")
    tensors = dict(read_safetensors(nob / "adapter_model.safetensors"))
    del tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight"]
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(nob / "adapter_model.safetensors"))
    refuses(nob, "model.layers.1.self_attn.k_proj has lora_B", "but no lora_A")

    # PEFT itself targeting the LM head and the embedding: tensors the ROM cannot take
    for target, expect in (("lm_head", "targets lm_head"), ("embed_tokens", "targets embed_tokens")):
        folder = run_peft(tiny_models["hf"], tmp_path / target, run=False, r=4, lora_alpha=4, target_modules=["q_proj", target])[0]
        refuses(folder, expect, "embeddings and the LM head live in ROM")
    # DoRA made by PEFT
    dora = run_peft(tiny_models["hf"], tmp_path / "realdora", run=False, r=4, lora_alpha=4, use_dora=True,
                    target_modules=["v_proj"])[0]
    refuses(dora, "uses DoRA")


# --- the command ------------------------------------------------------------------------------------------


def roma(*args):
    return subprocess.run([sys.executable, "-m", "roma_runtime.cli", "lora", *map(str, args)],
                          capture_output=True, text=True, env=cli_env(), timeout=120)


def test_cli_inspect(tiny_models, plain, second, tmp_path):
    r = roma("inspect", second[0], "--json")
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["targets"] == ["q_proj", "v_proj", "down_proj"] and facts["use_rslora"] is True
    assert facts["r"] == 4 and facts["lora_alpha"] == 8 and facts["modules"] == 6
    assert facts["per_target"]["q_proj"]["scales"] == [pytest.approx(4.0)] and facts["fits_slot_rank"]
    assert facts["parameter_count"] == 2 * (4 * (64 + 64) + 4 * (64 + 32) + 4 * (128 + 64))

    r = roma("inspect", plain[0], "--json", "--model", tiny_models["q4_1"], "--slot-rank", "4")
    facts = json.loads(r.stdout)
    assert r.returncode == 1 and facts["checked_against"] == "tiny-llama" and facts["fits_slot_rank"] is False

    r = roma("inspect", plain[0], "--model", tiny_models["hf"])
    assert r.returncode == 0 and "fits a rank-64 slot: yes" in r.stdout and "packed" in r.stdout

    bad = edit_config(plain[0], tmp_path / "dora", use_dora=True)
    r = roma("inspect", bad)
    assert r.returncode == 2 and "uses DoRA" in r.stderr and "Traceback" not in r.stderr
