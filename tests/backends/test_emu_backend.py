"""The `emu` backend end to end: the Engine on the real roma_core (HLS C simulation behind the emulated board)
against the Engine on the golden model (`ref`, quant numerics) with the same weights.

The tiny model is the Q4_1 GGUF: its default build passes every tensor through bit for bit, so `ref` on the
GGUF and `emu` on the build run the same weights and only the order of fp32 arithmetic differs.

Tolerance (logits, relative to the vector): max|l_emu - l_ref| <= TOL * max|l_ref|, TOL = 2e-3, against the
nearest of the golden model's own runs (whole prompt, split prompt, one token per call), or their spread when
that is larger -- as tests/hw/test_hls_roma_core.py and tb_roma_core.cpp. Why 2e-3: the core sums in another
order (each fp32 value ~1e-6 relative) and its cos/sin/exp differ by ulps; such a difference can move one int8
activation across a rounding step, which moves a layer output by up to |w| * amax/127, ~1e-4..1e-3 of the
logit scale after two layers. A functional error (wrong weight, position, head or adapter factor) moves logits
by ~0.1..1 of the scale, far outside.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cli_env
from float_noise import relative_error
from roma_runtime import RomaError
from roma_runtime.engine import Engine
from roma_runtime.generate import SamplingParams

pytest.importorskip("pynq")
pytestmark = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                                reason="the emulated board needs g++ and make")

TOL = 2e-3
GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "1, 2, 3, 4,"]
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def golden_refs(ref: Engine, ids: list[int]) -> list[np.ndarray]:
    """The ref backend's last-token logits three ways: whole prompt, 2 + rest, one token per call."""
    out = []
    for split in (None, 2, 1):
        cache = ref.backend.new_cache(64)
        if split is None:
            out.append(ref.backend.forward(ids, cache))
        elif split == 2:
            ref.backend.forward(ids[:2], cache)
            out.append(ref.backend.forward(ids[2:], cache))
        else:
            for t in ids:
                last = ref.backend.forward([t], cache)
            out.append(last)
    return out


def assert_close(emu_logits, refs) -> None:
    spread = max(relative_error(a, b) for a in refs for b in refs)
    rel = min(relative_error(emu_logits, r) for r in refs)
    assert rel <= max(TOL, spread), (rel, spread)


def last_logits(engine: Engine, ids: list[int]) -> np.ndarray:
    session = engine.new_session(64)
    engine._bind(session)
    return engine.backend.forward(ids, session.cache)


# --- fixtures -------------------------------------------------------------------------------------------------


def make_adapter(hf_folder, out, seed, **config):
    """A PEFT LoRA with random non-zero A and B (tiny_models.write_peft_adapter), skipped without peft."""
    pytest.importorskip("peft")
    from tiny_models import write_peft_adapter

    return write_peft_adapter(hf_folder, out, seed, **config)


@pytest.fixture(scope="module")
def engines(tiny_models, tiny_build):
    """(emu, ref) engines on the tiny Q4_1 model, 4 LoRA slots of rank 16 each, stored as the build's LoRA unit
    stores them (int8, as a U250's)."""
    emu = Engine(tiny_models["q4_1"], "emu", lora_slots=4, lora_rank=16, build=tiny_build)
    ref = Engine(emu.model, "ref", "quant", lora_slots=4, lora_rank=16, lora_dtype=emu.lora.dtype)
    return emu, ref


@pytest.fixture(scope="module")
def adapters(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(tiny_models["hf"], root / "a", 1, r=8, lora_alpha=16, target_modules=ALL),
        "b": make_adapter(tiny_models["hf"], root / "b", 2, r=4, lora_alpha=8, use_rslora=True,
                          target_modules=["q_proj", "v_proj", "down_proj"]),
    }


# --- choosing the backend, default builds ----------------------------------------------------------------------


def test_default_backend_is_emu_without_a_board_and_board_refuses_cleanly():
    from roma_runtime.backends import check_backend, default_backend

    assert default_backend() == "emu"  # no PYNQ board on this machine
    assert check_backend(None) == "emu" and check_backend(None, "float") == "ref"
    with pytest.raises(RomaError, match="needs a PYNQ board") as e:
        check_backend("board")
    assert "--backend emu" in e.value.hint


def test_default_build_is_compiled_once_cached_and_passes_q4_1_through(tiny_models, tmp_path, capfd):
    from roma_runtime.builds import default_build, default_build_dir
    from roma_runtime.artifact.build import read_manifest
    from roma_runtime.model.loader import load_model

    model = load_model(tiny_models["q4_1"])
    folder, now = default_build(model, cache=tmp_path)
    err = capfd.readouterr().err
    assert now and folder == default_build_dir(model, tmp_path) and err.count("\n") == 1 and "compiling" in err
    manifest = read_manifest(folder)
    assert manifest["quantization"]["bits"] == 4 and manifest["quantization"]["group"] == 32
    assert {t["method"] for t in manifest["tensors"].values()} == {"passthrough"}  # bit for bit
    assert default_build(model, cache=tmp_path) == (folder, False)
    assert capfd.readouterr().err == ""
    (folder / "manifest.json").unlink()  # a half-written build (the manifest comes last) is not reused
    assert default_build(model, cache=tmp_path, progress=False) == (folder, True)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no private folder left
    hf = load_model(tiny_models["hf"])  # float weights: 4-bit G32 round to nearest
    hf_folder, _ = default_build(hf, cache=tmp_path, progress=False)
    assert hf_folder != folder
    methods = {n: t["method"] for n, t in read_manifest(hf_folder)["tensors"].items()}
    assert methods["blk.0.wq"] == "rtn" and read_manifest(hf_folder)["tensors"]["blk.0.wq"]["bits"] == 4


def test_build_folder_as_model(tiny_models, engines, tmp_path):
    from roma_runtime.builds import default_build
    from roma_runtime.model.loader import load_model
    from roma_runtime.model.loader import locate_model

    # a build compiled from this session's GGUF (the cached one may name an earlier session's file as source)
    build, _ = default_build(engines[0].model, cache=tmp_path, progress=False)
    assert locate_model(build) == ("build", build)
    model = load_model(build)
    assert model.format == "build" and model.config == engines[0].config
    e = Engine(build, "emu", lora_slots=0)  # used directly, no default build
    assert e.backend.build_dir == build and e.tokenizer.encode("Hi there") == engines[0].tokenizer.encode(
        "Hi there")
    ids = e.tokenizer.encode(PROMPTS[0])
    assert np.array_equal(last_logits(e, ids), last_logits(engines[0], ids))  # the same build and core
    ref = Engine(build, "ref", lora_slots=0)  # the build's weights on the golden model
    assert np.array_equal(last_logits(ref, ids), last_logits(engines[1], ids))  # == the GGUF's, bit for bit
    # the tokenizer of a build is its source model's: gone, it is a clear error
    moved = tmp_path / "moved"
    shutil.copytree(build, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["model"]["source"] = str(tmp_path / "gone.gguf")
    (moved / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RomaError, match="not there any more"):
        Engine(moved, "ref", lora_slots=0)


# --- the engine on emu vs ref ---------------------------------------------------------------------------------


def test_emu_matches_ref_logits_and_greedy_tokens(engines):
    emu, ref = engines
    assert emu.backend.name == "emu" and emu.numerics == "quant" and emu.kv_dtype == ref.kv_dtype
    for text in PROMPTS:
        ids = emu.tokenizer.encode(text)
        assert_close(last_logits(emu, ids), golden_refs(ref, ids))
        a = emu.generate(ids, GREEDY).run()
        b = ref.generate(ids, GREEDY).run()
        assert a.ids == b.ids and a.text == b.text, text


def test_cycles_per_stage_and_the_bench_estimate(engines):
    from roma_runtime import bench
    from roma_runtime.artifact.boards import get_board
    from roma_runtime.device.driver import stage_names
    from roma_runtime.artifact.interface import kernel_constants, load_constants

    emu = engines[0].backend
    assert emu.clock_mhz == get_board("u250").clock_mhz  # the build's board
    last_logits(engines[0], [1, 2, 3, 4])
    prefill = emu.last_cycles()
    assert list(prefill) == stage_names(load_constants()) and prefill["gemv"] > 0 and prefill["lm_head"] > 0
    session = engines[0].new_session(16)
    emu.forward([5, 6, 7], session.cache)
    three = emu.last_cycles()
    emu.forward([8], session.cache)
    one = emu.last_cycles()
    assert 0 < sum(one.values()) < sum(three.values())  # one token costs less than three
    # the activation quantizer runs once per input of a layer: w_q's (w_k and w_v reuse its codes, on the same
    # engine), w_o's, w_gate's (w_up reuses them) and w_down's (act_quant.h's cycles; the head's counts as lm_head)
    t = kernel_constants("types.h")
    fdiv, fmul = t["FDIV_LATENCY"], t["FMUL_LATENCY"]

    def quantizer(cols: int, group: int) -> int:  # at the engine's lanes: the board's act_lanes, at most the group
        lanes = get_board("u250").engine_act_lanes(group)
        depths = 3 + 2 * fdiv + 1 + 2 + fmul + 2  # the max, the scale and reciprocal, the codes
        if lanes == group:  # one loop, a group per iteration (ACT_GROUPS)
            return cols // group + depths
        return cols // lanes + cols // group + cols // lanes + depths

    c, groups = emu.config, {n: e["group"] for n, e in emu.overlay.manifest["tensors"].items() if e.get("group")}
    qdim = c.n_heads * c.head_dim
    assert one["act_quant"] == sum(
        quantizer(c.dim, groups[f"blk.{i}.wq"]) + quantizer(qdim, groups[f"blk.{i}.wo"])
        + quantizer(c.dim, groups[f"blk.{i}.w_gate"]) + quantizer(c.ffn_dim, groups[f"blk.{i}.w_down"])
        for i in range(c.n_layers))
    cfg = bench.BenchConfig(lengths=[8], decode_tokens=3, repeats=1, lora=False, warmup=False)
    report = bench.run_bench(engines[0], cfg, backend="emu", progress=False)
    assert report["cycles"]["label"] == "estimate" and report["cycles"]["clock_mhz"] == emu.clock_mhz
    c = report["results"][0]["ours"]["cycles"]
    assert c["estimate_prefill_tokens_per_s"] > 0 and c["estimate_decode_tokens_per_s"] > 0
    # beside the counted figure, the build's roofline (roma plan's estimate at nominal peak bandwidth)
    roof = report["cycles"]["roofline"]
    assert roof["decode_tokens_per_s"] > 0 and roof["context_tokens"] > 0
    assert roof["prefill_tokens_per_s"] == emu.overlay.manifest["plan"]["estimate"]["prefill_tokens_per_s"] > 0
    # ... and without the LoRA products it counts (one slot of the build's unit), for a run without an adapter
    assert roof["without_lora"]["decode_tokens_per_s"] > roof["decode_tokens_per_s"]
    assert roof["without_lora"]["prefill_tokens_per_s"] > roof["prefill_tokens_per_s"]
    table = bench.format_table(report)
    assert "estimate at" in table
    # autonomous decode: every token's forward and its greedy sampling on chip, by ARGMAX at the logits' 16 banks of a
    # U250 (sampler.h: V / 16 iterations, its depth, 15 merges), not by the four lists (V / 4)
    auto = report["autonomous"]
    per = auto["decode_cycles_per_token"]
    vocab, depth = emu.config.vocab_size, t["ROM_LATENCY"] + 1 + t["FMUL_LATENCY"] + 1
    assert per["sampler"] == -(-vocab // 16) + depth + 15 + 2 < vocab // 4
    assert auto["estimate_decode_tokens_per_s"] == pytest.approx(emu.clock_mhz * 1e6 / sum(per.values()))
    assert "autonomous decode, FPGA cycles per token" in table
    # the roofline is for a decode at its context, a prompt that long: not beside a prompt of 8 tokens
    assert roof["context_tokens"] != 8 and "roma plan's roofline" not in table
    # the plot's stage panel: the counted stages of a decode token, largest first
    bars = [b.get_label() for b in bench.plot_figure(report).axes[2].containers]
    decode = c["decode_per_token"]
    assert bars == sorted((s for s in decode if decode[s]), key=decode.get, reverse=True) and "gemv" in bars


def test_chat_with_kv_prefix_reuse_equals_a_fresh_run(engines):
    emu = engines[0]
    chat = emu.chat(system="You are terse.", capacity=256)
    chat.send("Hello!", GREEDY).run()
    second = chat.send("And again?", GREEDY).run()
    assert second.reused_tokens > 10
    fresh = emu.generate(second.prompt_ids, GREEDY, session=emu.new_session(256)).run()
    assert fresh.reused_tokens == 0 and fresh.ids == second.ids and fresh.text == second.text


def test_prompt_over_the_context_is_refused_with_nothing_changed(engines):
    emu = engines[0]
    chat = emu.chat(capacity=48)
    chat.send("Hi", SamplingParams(max_tokens=4, temperature=0.0)).run()
    s = chat.session
    before = (list(chat.messages), list(s.ids), s.cache.length, s.cache.kv.rows(s.cache.capacity))
    with pytest.raises(RomaError, match="context holds 48"):
        chat.send("word " * 60, GREEDY)
    with pytest.raises(RomaError, match="do not fit"):
        emu.backend.forward(list(range(100, 160)), s.cache)
    assert (chat.messages, s.ids, s.cache.length) == tuple(before[:3])
    assert np.array_equal(s.cache.kv.rows(s.cache.capacity), before[3])


# --- LoRA ------------------------------------------------------------------------------------------------------


def test_lora_on_emu_matches_ref_and_swaps_match_fresh_runs(engines, adapters):
    emu, ref = engines
    for e in engines:
        for name in ("a", "b"):
            e.load_lora(name, adapters[name])
    ids = emu.tokenizer.encode(PROMPTS[0])
    fresh = {}
    for name in ("a", "b", None):
        session = emu.new_session(64, adapter=name)
        emu._bind(session)
        fresh[name] = emu.backend.forward(ids, session.cache)
        rs = [None] * 3
        for i, split in enumerate((None, 2, 1)):  # ref's own spread, under the same adapter
            r = ref.new_session(64, adapter=name)
            ref._bind(r)
            if split is None:
                rs[i] = ref.backend.forward(ids, r.cache)
            elif split == 2:
                ref.backend.forward(ids[:2], r.cache)
                rs[i] = ref.backend.forward(ids[2:], r.cache)
            else:
                for t in ids:
                    rs[i] = ref.backend.forward([t], r.cache)
        assert_close(fresh[name], rs)
    assert min(relative_error(fresh[k], fresh[None]) for k in "ab") > 20 * TOL  # adapters act
    # one session swapping adapters (and off) in turn: each turn equals its fresh run, bit for bit
    s = emu.new_session(64)
    for name in ("a", "b", None, "a", None, "b"):
        s.adapter = name
        s.reset()
        emu._bind(s)
        assert np.array_equal(emu.backend.forward(ids, s.cache), fresh[name]), name
    a_ref = ref.generate(ids, GREEDY, adapter="a").run().ids
    assert emu.generate(ids, GREEDY, adapter="a").run().ids == a_ref


def test_lora_slots_must_fit_the_builds_lora_unit(tiny_models, engines):
    from conftest import TINY_LORA_RANK, TINY_LORA_SLOTS
    from roma_runtime.lora import LoraSlots

    emu = engines[0].backend
    unit = emu.lora_unit  # the manifest's lora_unit, as roma_model.h gave it to the core
    assert (unit.slots, unit.rank, unit.dtype, len(unit.targets)) == (TINY_LORA_SLOTS, TINY_LORA_RANK, "int8", 7)
    with pytest.raises(RomaError, match="above this build's LoRA unit") as e:
        emu.check_lora(LoraSlots(emu.config, 2, unit.rank + 1))
    assert f"--lora-slot-rank {unit.rank + 1}" in e.value.hint
    with pytest.raises(RomaError, match=f"but this build's LoRA unit has {unit.slots} slots"):
        emu.check_lora(LoraSlots(emu.config, unit.slots + 1, 8))
    with pytest.raises(RomaError, match="stores int8"):
        emu.check_lora(LoraSlots(emu.config, 1, 8, "fp16"))
    with pytest.raises(RomaError, match=f"--lora-rank {unit.rank} or less"):
        Engine(engines[0].model, "emu", lora_slots=1, lora_rank=unit.rank + 1, build=emu.build_dir)


def test_an_adapter_the_build_cannot_hold_is_refused_alike_on_emu_and_ref(tiny_build, engines):
    """The golden model of a build takes its limits from the build's LoRA unit too: the same refusal, the same
    defaults, and nothing changes."""
    from conftest import TINY_LORA_RANK, TINY_LORA_SLOTS
    from roma_runtime.lora import Adapter
    from roma_runtime.model.config import linear_shapes
    from roma_runtime.model.loader import load_model

    emu = engines[0]
    ref = Engine(load_model(tiny_build), "ref", "quant")  # the build's LoRA unit sizes its slots
    assert (ref.lora.capacity, ref.lora.slot_rank, ref.lora.dtype) == (TINY_LORA_SLOTS, TINY_LORA_RANK, "int8")
    with pytest.raises(RomaError, match=f"has {TINY_LORA_SLOTS} slots"):
        Engine(ref.model, "ref", "quant", lora_slots=TINY_LORA_SLOTS + 1)
    out, inp = linear_shapes(emu.config)["wv"]
    r = TINY_LORA_RANK + 1
    big = Adapter.from_factors("big", emu.config, {(1, "wv"): (np.ones((r, inp), np.float32),
                                                               np.ones((out, r), np.float32), 1.0)})
    for engine in (emu, ref):
        before = (engine.lora.status(), engine.lora.version, engine.lora.active)
        with pytest.raises(RomaError, match=f"has rank {r}, above the LoRA slot rank {TINY_LORA_RANK} of this "
                                            "build's LoRA unit") as e:
            engine.load_lora("big", big)
        assert f"roma compile --lora-slot-rank {r}" in e.value.hint
        assert (engine.lora.status(), engine.lora.version, engine.lora.active) == before


# --- SmolLM2 and the CLI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_emu(smollm2, smollm2_build):
    return Engine(smollm2, "emu", lora_slots=0, build=smollm2_build)


def test_smollm2_first_greedy_token_equals_ref(smollm2, smol_emu, engines):
    ref = Engine(smollm2, "ref", "quant", lora_slots=0)
    for text in PROMPTS[:2]:
        ids = smol_emu.tokenizer.encode(text)
        assert int(np.argmax(last_logits(smol_emu, ids))) == int(np.argmax(last_logits(ref, ids))), text
    # two emulated overlays in one process: each call runs on its own build (the board re-downloads)
    ids = engines[0].tokenizer.encode(PROMPTS[2])
    tiny_before = last_logits(engines[0], ids)
    smol_before = last_logits(smol_emu, ids)
    assert np.array_equal(last_logits(engines[0], ids), tiny_before)
    assert np.array_equal(last_logits(smol_emu, ids), smol_before)


def roma(*args, stdin: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roma_runtime.cli", *map(str, args)], input=stdin,
                          capture_output=True, text=True, env=cli_env(), cwd=str(REPO), timeout=timeout)


def test_cli_generate_on_emu_json(smol_emu):
    p = roma("generate", "The capital of France is", "--backend", "emu", "--json", "--max-tokens", 8,
             "--temperature", 0)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert r["backend"] == "emu" and r["numerics"] == "quant" and 1 <= len(r["ids"]) <= 8
    assert "Paris" in r["text"] and r["decode_tokens_per_s"] > 0 and r["prefill_tokens_per_s"] > 0
    assert "Traceback" not in p.stderr


def test_cli_chat_runs_on_emu_by_default(smol_emu):
    p = roma("chat", "--max-tokens", 12, "--temperature", 0, stdin="What is the capital of France?\n/quit\n")
    assert p.returncode == 0, p.stderr
    assert "on emu (quant)" in p.stderr and "Traceback" not in p.stderr
    assert p.stdout.strip() and "tok/s" in p.stderr  # an answer (4-bit greedy: not always "Paris") and its speed


def test_smollm2_2bit_build_on_emu_matches_its_golden_quant_model(smollm2, smollm2_2bit_build):
    """A SmolLM2 2-bit build (RTN, group 64) on the emulated board: its last-token logits are within the float
    noise of the golden quant model on that same build, and its greedy token is one the golden model gives under
    an equally valid fp32 evaluation (float_noise.py: at 2 bits one ulp moves the logits by several %)."""
    from float_noise import assert_within_float_noise, golden_variant_logits
    from roma_runtime.model.loader import load_build
    from roma_runtime.backends.emulated import EmuBackend
    from roma_runtime.tokenizer import Tokenizer

    emu = EmuBackend(smollm2_2bit_build, progress=False)
    model = load_build(smollm2_2bit_build)
    tokenizer = Tokenizer.from_model(smollm2)
    for text in PROMPTS[:2]:
        ids = tokenizer.encode(text)
        got = np.asarray(emu.forward(ids, emu.new_cache(64)), np.float32).reshape(-1)
        assert_within_float_noise(got, golden_variant_logits(model, ids), TOL)
