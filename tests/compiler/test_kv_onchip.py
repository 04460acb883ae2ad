"""The on-chip KV cache option end to end: `roma plan/compile --kv-onchip N` (the plan's reservation, the
manifest, KV_ONCHIP_CTX in roma_model.h, refusals before anything is written), and a build with it on the
emulated board, where roma_core attends over its on-chip copy of the KV rows (KvPlace::OnChip), writes new rows
through to the session's DDR buffer and refills the copy on CMD_KV_LOAD, which the driver issues whenever the
copy does not hold the buffer and rows a run needs.

The tiny model is the Q4_1 GGUF of conftest.tiny_models. The DDR-KV build is the session's default build
(tiny_build: 4-bit G32 for a U250); the on-chip build is the same compile with kv_onchip=KV. The weights and the
arithmetic are the same, so the two give the same logits bit for bit; only where attention reads its keys and
values from differs (and the cycles that costs).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, cli_env
from roma_runtime import RomaError
from roma_runtime.builds import DEFAULT_BUILD
from roma_runtime.artifact.boards import get_board
from roma_runtime.artifact.build import verify_build
from roma_runtime.compiler.build import compile_model
from roma_runtime.artifact.kv_layout import port_lanes
from roma_runtime.compiler.placement.plan import check_kv_onchip, kv_bytes_per_token, make_plan
from roma_runtime.generate import SamplingParams

pytest.importorskip("pynq")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                               reason="the emulated board needs g++ and make")

KV = 48  # on-chip positions of the test build (the tiny model's context is 256)
IDS = [1, 504, 3575, 282, 4649, 314, 7, 1000]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0)


@pytest.fixture(scope="module")
def onchip_build(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("kv_onchip") / "build"
    compile_model(tiny_models["q4_1"], out, progress=False, kv_onchip=KV, **DEFAULT_BUILD)
    return out


@pytest.fixture(scope="module")
def onchip_emu(onchip_build):
    from roma_runtime.backends.emulated import EmuBackend

    return EmuBackend(onchip_build, progress=False)


@pytest.fixture(scope="module")
def engines(onchip_build, tiny_build):
    """(on-chip KV engine, DDR KV engine) on the same weights, no LoRA."""
    from roma_runtime.engine import Engine

    return Engine(onchip_build, "emu", lora_slots=0), Engine(tiny_build, "emu", lora_slots=0)


# --- plan and build ---------------------------------------------------------------------------------------------


def test_the_build_records_the_option(onchip_build, tiny_build, tiny_models):
    from roma_runtime.model.loader import load_model

    config = load_model(tiny_models["q4_1"]).config
    manifest = verify_build(onchip_build)
    kv = manifest["kv_onchip"]
    assert kv["tokens"] == KV and kv["bytes"] == KV * kv_bytes_per_token(config) == KV * 2 * 2 * 32 * 2
    assert kv["placement"] == "URAM" and kv["uram"] >= 1 and manifest["plan"]["kv_cache"]["tokens"] == KV
    assert verify_build(tiny_build)["kv_onchip"] is None
    header = (onchip_build / "roma_model.h").read_text()
    assert f"constexpr int KV_ONCHIP_CTX = {KV};" in header and "#define ROMA_KV_ONCHIP_IMPL uram" in header
    assert "constexpr int KV_ONCHIP_CTX = 0;" in (tiny_build / "roma_model.h").read_text()
    # the reservation comes out of the budget before the weights
    plan = make_plan(config, "u250", lora_rank=0, kv_tokens=KV)
    assert plan.kv_cache.uram == kv["uram"] and plan.uram_used >= kv["uram"]


def test_refused_before_anything_is_written(tiny_models, onchip_build, smollm2, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(onchip_build, copy)
    with pytest.raises(RomaError, match="--kv-onchip 257 exceeds the model's context length 256"):
        compile_model(tiny_models["q4_1"], copy, progress=False, force=True, kv_onchip=257, **DEFAULT_BUILD)
    verify_build(copy)  # the old build is untouched
    # SmolLM2's KV is 23,040 bytes a token: 2048 tokens (45 MiB) do not fit a KV260's on-chip memory
    with pytest.raises(RomaError, match=r"on-chip KV cache of 2048 tokens \(45.00 MiB\) does not fit in kv260") as e:
        compile_model(smollm2, tmp_path / "smol", progress=False, board="kv260", kv_onchip=2048)
    assert re.search(r"at most \d+ tokens fit on chip \(--kv-onchip \d+\)", e.value.hint)
    assert not (tmp_path / "smol").exists()
    check_kv_onchip(smollm2.config, "u250", 1024)  # ... and fits a U250


def test_cli_plan_and_compile_take_kv_onchip(tiny_models, tmp_path):
    def roma(*args):
        p = subprocess.run([sys.executable, "-m", "roma_runtime.cli", *map(str, args)], capture_output=True,
                           text=True, env=cli_env(), cwd=str(REPO), timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout

    plan = json.loads(roma("plan", "--model", tiny_models["q4_1"], "--board", "u250", "--lora-rank", "0",
                           "--kv-onchip", "64", "--json"))
    assert plan["kv_cache"]["tokens"] == 64 and plan["kv_cache"]["placement"] == "URAM"
    assert plan["estimate"]["context_tokens"] == 64
    summary = json.loads(roma("compile", "--model", tiny_models["q4_1"], "--out", tmp_path / "b", "--kv-onchip",
                              "16", "--json", "--no-footprint"))
    assert summary["kv_onchip"]["tokens"] == 16
    assert "constexpr int KV_ONCHIP_CTX = 16;" in (tmp_path / "b" / "roma_model.h").read_text()


# --- the emulated board -----------------------------------------------------------------------------------------


@needs_gxx
def test_onchip_kv_gives_the_ddr_builds_logits_bit_for_bit(onchip_emu, tiny_emu):
    assert onchip_emu.max_context == onchip_emu.core.kv_onchip == KV and tiny_emu.core.kv_onchip == 0
    runs = []
    for emu in (tiny_emu, onchip_emu):  # one after the other: switching backends reloads the overlay
        cache = emu.new_cache(KV)
        logits = [emu.forward(IDS, cache)]  # prefill (one chunk of 8)
        for _ in range(4):  # greedy decode steps
            logits.append(emu.forward([int(np.argmax(logits[-1]))], cache))
        runs.append((logits, cache, emu.last_cycles()))
    (want, ddr_cache, ddr_cycles), (got, chip_cache, chip_cycles) = runs
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    # the rows written through to the DDR buffer are the DDR build's
    assert np.array_equal(chip_cache.read_rows(chip_cache.length)[0].view(np.uint16),
                          ddr_cache.read_rows(ddr_cache.length)[0].view(np.uint16))
    assert np.array_equal(chip_cache.read_rows(chip_cache.length)[1].view(np.uint16),
                          ddr_cache.read_rows(ddr_cache.length)[1].view(np.uint16))
    # a decode step on the same buffer loads nothing; attention reads on-chip RAM instead of DDR bursts
    assert chip_cycles["kv_load"] == 0 and chip_cycles["attention"] < ddr_cycles["attention"]
    assert {k: v for k, v in chip_cycles.items() if k != "attention"} == {
        k: v for k, v in ddr_cycles.items() if k != "attention"}


@needs_gxx
def test_interleaved_sessions_reload_and_equal_each_run_alone(onchip_emu):
    prompts = [IDS, [1, 31, 2710, 9, 504, 17], [1, 4649, 4649, 314]]
    alone = []
    for p in prompts:  # each prompt alone: prefill, then 5 greedy decode steps
        cache = onchip_emu.new_cache(KV)
        logits = [onchip_emu.forward(p, cache)]
        for _ in range(5):
            logits.append(onchip_emu.forward([int(np.argmax(logits[-1]))], cache))
        alone.append(logits)
    caches = [onchip_emu.new_cache(KV) for _ in prompts]
    last = [onchip_emu.forward(p, c) for p, c in zip(prompts, caches)]
    loads = []
    for step in range(5):  # round robin: every step runs on another buffer than the one before
        for i, c in enumerate(caches):
            last[i] = onchip_emu.forward([int(np.argmax(last[i]))], c)
            assert np.array_equal(last[i], alone[i][step + 1])
            loads.append(onchip_emu.last_cycles()["kv_load"])
    assert all(n > 0 for n in loads)  # every switch reloaded the rows of the buffer that runs
    # the reload's cycles: ATT_SIMD fp16 per cycle (the board's KV port), one burst per layer and K/V
    cfg = onchip_emu.config
    rows = len(prompts[0]) + 4
    simd = port_lanes(cfg.head_dim, get_board(DEFAULT_BUILD["board"]).kv_port_bits)
    assert loads[-3] == 2 * cfg.n_layers * (rows * cfg.kv_dim // simd + 64 + 1)


@needs_gxx
def test_save_run_another_restore_continue_equals_uninterrupted(engines, tmp_path, monkeypatch):
    engine = engines[0]
    core = engine.backend.core
    tok = engine.tokenizer
    a, b = engine.new_session(), engine.new_session()
    assert a.capacity == b.capacity == KV  # the default session is the on-chip context
    ra = engine.generate(tok.encode("The weather today is"), greedy(6), session=a).run()
    rb = engine.generate(tok.encode("Once upon a time"), greedy(6), session=b).run()
    fa, fb = a.save(tmp_path / "a.npz"), b.save(tmp_path / "b.npz")
    follow_a = a.ids + [ra.ids[-1]] + tok.encode(" and then")
    follow_b = b.ids + [rb.ids[-1]] + tok.encode(" there was")
    want_b = engine.generate(follow_b, greedy(6), session=engine.restore_session(fb)).run().ids
    want_a = engine.generate(follow_a, greedy(6), session=a).run().ids  # uninterrupted: the chip holds a's rows

    # restored into a new session after another one ran
    engine.generate(tok.encode("1, 2, 3,"), greedy(4)).run()
    assert engine.generate(follow_a, greedy(6), session=engine.restore_session(fa)).run().ids == want_a

    # restored into the session whose buffer the chip holds: the host's write makes the driver reload it
    engine.generate(follow_a + [want_a[0]], greedy(6), session=a).run()
    assert a.length > len(follow_b)  # the chip now holds more rows of this buffer than b's state has
    commands = []
    real_call = core._call
    monkeypatch.setattr(core, "_call", lambda command, **kw: commands.append(command) or real_call(command, **kw))
    engine.restore_session(fb, session=a)
    assert engine.generate(follow_b, greedy(6), session=a).run().ids == want_b
    assert commands[0] == core.constants["CMD_KV_LOAD"]

    # without that invalidation the chip would attend over the rows it held before the restore
    restored = engine.restore_session(fb)
    n = restored.length
    good = engine.backend.forward(follow_b[n:], restored.cache)
    engine.generate(follow_a + [want_a[0]], greedy(6), session=a).run()
    monkeypatch.setattr(core, "kv_written", lambda kv: None)
    engine.restore_session(fb, session=a)
    assert not np.array_equal(engine.backend.forward(follow_b[n:], a.cache), good)


@needs_gxx
def test_a_session_longer_than_the_onchip_context_is_refused(engines, onchip_emu, tiny_emu):
    from roma_runtime.device.driver import KVBuffer

    engine = engines[0]
    used = engine.kv_pool.used
    with pytest.raises(RomaError, match=rf"context of {KV + 1} tokens does not fit this build's on-chip KV cache "
                                        rf"of {KV} tokens \(compiled with --kv-onchip {KV}\)") as e:
        engine.new_session(KV + 1)
    assert "--context 48" in e.value.hint and "larger --kv-onchip" in e.value.hint and "without it" in e.value.hint
    assert engine.kv_pool.used == used  # nothing reserved by the refusal
    with pytest.raises(RomaError, match=f"does not fit this build's on-chip KV cache of {KV} tokens"):
        onchip_emu.new_cache(KV + 1)
    # the core refuses it on its own (ERR_CONTEXT), and a KV load on a build without on-chip KV
    core = onchip_emu.core
    with pytest.raises(RomaError, match="ERR_CONTEXT"):
        core.prefill(IDS, 0, kv=KVBuffer(core, KV + 1))
    tiny_emu.forward(IDS, tiny_emu.new_cache(KV))  # the emulated board runs the DDR build's overlay again
    with pytest.raises(RomaError, match="ERR_BAD_COMMAND"):
        tiny_emu.core.run(tiny_emu.core.constants["CMD_KV_LOAD"], n_tokens=1)
    # a prompt that fills the on-chip context still runs
    s = engine.new_session()
    assert engine.generate(list(range(1, KV + 1)), greedy(1), session=s).run().finish_reason in ("context", "length")


@needs_gxx
def test_autonomous_generate_with_onchip_kv(engines):
    chip, ddr = engines
    prompt = chip.tokenizer.encode("The capital of France is")
    want = ddr.generate(prompt, greedy(20), session=ddr.new_session(KV)).run().ids
    assert chip.generate(prompt, greedy(20), session=chip.new_session(), on_chip=True).run().ids == want
    # two on-chip generations interleaved chunk by chunk (each CMD_GENERATE on another buffer) equal each alone
    other = chip.tokenizer.encode("def add(a, b):")
    want_other = ddr.generate(other, greedy(20), session=ddr.new_session(KV)).run().ids
    gens = [chip.generate(p, greedy(20), session=chip.new_session(), on_chip=True) for p in (prompt, other)]
    for g in gens:
        g.chunk = 3
    its = [iter(g) for g in gens]
    live = list(its)
    while live:
        for it in list(live):
            if next(it, None) is None:
                live.remove(it)
    assert gens[0].result.ids == want and gens[1].result.ids == want_other
