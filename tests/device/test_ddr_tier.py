"""The DDR-streamed weight tier end to end: the plan's `ddr` option, a build whose DDR tensors live in
ddr_weights.bin (no ROM arrays for them), the core streaming them through its `ddr_weights` port on the emulated
board (bit-identical to the same build in ROM, and the golden model's logits), the driver's load path and its
refusals, and SmolLM2 2-bit placed for a KV260, where 29 of 30 layers and the lm head stream from DDR.

The tiny model is the Q4_1 GGUF of conftest.tiny_models; its ROM build is the session's default build
(tiny_build: 4-bit G32 for a U250, everything on chip), and the DDR build is the same compile with
ddr="1,head,embedding": layer 0 stays in ROM, layer 1, the untied lm head and the token embedding stream.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from conftest import REPO, cli_env
from float_noise import assert_within_float_noise, golden_variant_logits
from roma_runtime import RomaError
from roma_runtime.artifact import brom_image as brom
from roma_runtime.artifact import ddr_image
from roma_runtime.artifact.boards import argument_memories
from roma_runtime.artifact.build import DDR_FILE, DDR_STREAM, is_ddr, verify_build
from roma_runtime.builds import DEFAULT_BUILD
from roma_runtime.compiler.placement.memory import ddr_tiles
from roma_runtime.compiler.build import compile_model
from roma_runtime.compiler.placement.plan import make_plan
from roma_runtime.model.loader import load_build

pytest.importorskip("pynq")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                               reason="the emulated board needs g++ and make")

TOL = 2e-3  # max|dl| / max|l| against the golden model, as tests/backends/test_emu_backend.py (its header explains it)
DDR_UNITS = "1,head,embedding"
IDS = [1, 504, 3575, 282, 4649, 314, 7, 1000]


@pytest.fixture(scope="module")
def tiny_config(tiny_models):
    from roma_runtime.model.loader import load_model

    return load_model(tiny_models["q4_1"]).config


@pytest.fixture(scope="module")
def ddr_build(tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddr") / "build"
    compile_model(tiny_models["q4_1"], out, progress=False, ddr=DDR_UNITS, **DEFAULT_BUILD)
    return out


@pytest.fixture(scope="module")
def ddr_emu(ddr_build):
    from roma_runtime.backends.emulated import EmuBackend

    return EmuBackend(ddr_build, progress=False)


# --- the plan ---------------------------------------------------------------------------------------------------


def test_plan_streams_the_units_asked_for(tiny_config):
    fits = make_plan(tiny_config, "u250", lora_rank=0)
    assert fits.fits_on_chip
    plan = make_plan(tiny_config, "u250", lora_rank=0, ddr="1,head")
    assert plan.layers_on_chip() == [0] and plan.layers_streamed() == [1]
    assert plan.unit_placement(("lm_head", "norm")) == DDR_STREAM and plan.unit_placement(("embedding",)) != DDR_STREAM
    assert plan.to_dict()["ddr_forced"] == [1, "head"] and plan.ddr_forced == make_plan(
        tiny_config, "u250", lora_rank=0, ddr=[1, "head"]).ddr_forced
    assert "sent to DDR on purpose (--ddr): layer 1, head" in plan.render()
    # what the forced units would have used stays free
    assert plan.bram36_used + plan.uram_used < fits.bram36_used + fits.uram_used
    everything = make_plan(tiny_config, "u250", lora_rank=0, ddr="all")
    # every matrix streams; the norms are rows of g_norms, on chip in every build
    assert all(t.placement == DDR_STREAM for t in everything.tensors if t.kind != "norm")
    assert everything.layers_streamed() == [0, 1]
    assert make_plan(tiny_config, "u250", lora_rank=0, ddr="0-1").layers_streamed() == [0, 1]


@pytest.mark.parametrize("spec, config_change, message", [
    ("2", {}, "names layer 2, but .* has layers 0-1"),
    ("1,lm", {}, "does not know the unit 'lm'"),
    ("1-0", {}, "the range 1-0 runs backwards"),
    ("embedding", {"tied_embeddings": True}, "ties its token embedding to the lm head"),
])
def test_plan_refuses_units_the_model_does_not_have(tiny_config, spec, config_change, message):
    with pytest.raises(RomaError, match=message):
        make_plan(replace(tiny_config, **config_change), "u250", lora_rank=0, ddr=spec)


def test_compile_refuses_a_bad_unit_before_touching_the_build(tiny_models, ddr_build, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(ddr_build, copy)
    with pytest.raises(RomaError, match="names layer 7"):
        compile_model(tiny_models["q4_1"], copy, progress=False, force=True, ddr="7", **DEFAULT_BUILD)
    verify_build(copy)  # the old build is untouched


def test_cli_plan_and_compile_take_ddr_and_uram(tiny_models, tmp_path):
    def roma(*args):
        p = subprocess.run([sys.executable, "-m", "roma_runtime.cli", *map(str, args)], capture_output=True,
                           text=True, env=cli_env(), cwd=str(REPO), timeout=300)
        assert p.returncode == 0, p.stderr
        return p.stdout

    out = roma("plan", "--model", tiny_models["q4_1"], "--board", "u250", "--lora-rank", "0", "--ddr", "1",
               "--uram", "head")  # and the URAM tier's option (test_uram_tier.py)
    assert "layer 1 streams from DDR" in out and "sent to DDR on purpose (--ddr): layer 1" in out
    assert "put in URAM on purpose (--uram): head" in out
    summary = json.loads(roma("compile", "--model", tiny_models["q4_1"], "--out", tmp_path / "b", "--ddr", "head",
                              "--json", "--no-footprint"))
    assert summary["ddr_bytes"] > 0 and (tmp_path / "b" / DDR_FILE).is_file()
    assert not (tmp_path / "b" / "output.bin").exists() and (tmp_path / "b" / "blk.1.wq.bin").is_file()


# --- the build --------------------------------------------------------------------------------------------------


def test_ddr_build_has_no_rom_arrays_for_ddr_tensors(ddr_build, tiny_build):
    manifest = verify_build(ddr_build)
    tensors = manifest["tensors"]
    ddr = [n for n, e in tensors.items() if is_ddr(e)]
    on_chip = [n for n in tensors if n not in ddr]
    assert sorted(ddr) == sorted([f"blk.1.{lin}" for lin in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")]
                                 + ["token_embd", "output"])
    assert on_chip == [f"blk.0.{lin}" for lin in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")]
    # the .bin/.dat set: ROM images only for on-chip tensors; the DDR ones are in ddr_weights.bin, listed with
    # its checksum like every other file
    files = set(manifest["files"])
    for n in on_chip:
        assert {f"{n}.bin", f"{n}.dat"} <= files and tensors[n]["image"] == f"{n}.bin"
    for n in ddr:
        assert not (ddr_build / f"{n}.bin").exists() and not (ddr_build / f"{n}.dat").exists()
        e = tensors[n]
        assert e["image"] == DDR_FILE and e["init"] is None and e["rom_bytes"] == 0 and e["ddr_words"] > 0
    assert DDR_FILE in files and manifest["ddr"]["tensors"] == ddr
    words = ddr_image.read_ddr_image(ddr_build / DDR_FILE)
    assert manifest["ddr"]["words"] == words.size and manifest["ddr"]["crc32"] == int(words[3])
    assert manifest["sizes"]["ddr_bytes"] == 4 * sum(tensors[n]["ddr_words"] for n in ddr)
    # the header: synthesis includes the .dat of on-chip tensors only (once per bank array: planes, scales,
    # minimums, and tile), every linear's layer 0 in the bank of the one ROM engine and layer 1 on the DDR engine;
    # DDR offsets and the image's identity
    header = (ddr_build / "roma_model.h").read_text()
    included = re.findall(r'#include "(.+)\.dat"', header)
    assert list(dict.fromkeys(included)) == on_chip
    assert all(included.count(n) == 3 * tensors[n]["tiles"] for n in on_chip)
    for lin in ("WQ", "WK", "W_DOWN"):  # one engine for every linear's ROM layer, one for every DDR layer
        assert f"constexpr int UNIT_{lin}[N_LAYERS] = {{0, 1}};" in header
    assert f"constexpr long long DDR_WORDS = {words.size};" in header
    assert f"constexpr unsigned DDR_CRC = 0x{int(words[3]):08x}u;" in header
    assert f"constexpr int WEIGHT_PORT_BITS = {manifest['board']['weight_port_bits']};" in header
    assert f"constexpr long long DDR_WQ[N_LAYERS] = {{-1, {tensors['blk.1.wq']['ddr_offset']}}};" in header
    assert f"constexpr long long DDR_OUTPUT = {tensors['output']['ddr_offset']};" in header
    # the same weights as the all-ROM build, read back through either tier
    rom = load_build(tiny_build)
    got = load_build(ddr_build)
    pairs = [(getattr(rom.weights.layers[i], lin), getattr(got.weights.layers[i], lin))
             for i in range(2) for lin in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")]
    pairs += [(rom.weights.token_embedding, got.weights.token_embedding), (rom.weights.output, got.weights.output)]
    for a, b in pairs:
        assert a.bits == b.bits and a.group == b.group and np.array_equal(a.codes, b.codes)
        assert np.array_equal(a.scales.view(np.uint16), b.scales.view(np.uint16))
        assert np.array_equal(a.minimums.view(np.uint16), b.minimums.view(np.uint16))


def test_ddr_layout_round_trips_every_width():
    from roma_runtime.model.weights import QuantizedMatrix

    rng = np.random.default_rng(5)
    for bits in (2, 3, 4, 8):
        for group, rows, tiles in ((32, 10, 2), (64, 9, 3), (128, 7, 1)):  # 60, 18 and 21 steps per tile
            qm = QuantizedMatrix(rng.integers(0, 1 << bits, (rows, 384), dtype=np.uint8),
                                 rng.standard_normal((rows, 384 // group)).astype(np.float16),
                                 rng.standard_normal((rows, 384 // group)).astype(np.float16), bits, group)
            img = brom.pack(qm, tiles)
            words = ddr_image.ddr_words(img)
            assert words.size == tiles * ddr_image.ddr_tile_words(bits, group, rows // tiles, 384)
            assert words.size % 16 == 0  # tiles start on 512-bit words
            back = ddr_image.ddr_unpack(words, bits, group, rows, 384, tiles)
            assert back.sha256() == img.sha256()
    # 4 steps: one block of 32 scale words and 32 steps of 4 plane words
    with pytest.raises(RomaError, match="has 160 words, not 159"):
        ddr_image.ddr_unpack(np.zeros(159, np.uint32), 4, 32, 4, 32, 1)


@needs_gxx
def test_synthesis_gets_rom_arrays_for_on_chip_tensors_only(ddr_build, tmp_path):
    """roma_core.cpp on the synthesis path (__SYNTHESIS__, -Werror) against the DDR build: it compiles (the
    DDR tensors' .dat files do not exist, so including one would fail) and defines ROM banks for the ROM engines
    only (layer 0's; layer 1's linears run on their DDR engines)."""
    hls = REPO / "hw" / "hls"
    obj = tmp_path / "roma_core.o"
    r = subprocess.run(["g++", "-std=c++14", "-pedantic-errors", "-O0", "-c", "-D__SYNTHESIS__", "-ffp-contract=off", "-Wall", "-Wextra",
                        "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-label", f"-I{hls / 'include'}", f"-I{hls}",
                        f"-I{ddr_build}", str(hls / "roma_core.cpp"), "-o", str(obj)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    nm = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True, check=True).stdout
    roms = set(re.findall(r"Unit<(\d+)>::(planes|scales|mins)", nm))
    assert roms == {("0", a) for a in ("planes", "scales", "mins")}  # one bank: the ROM engine of all linears
    assert "brom_ddr_gemv" in nm and "embedding_row_ddr" in nm


# --- the emulated board -----------------------------------------------------------------------------------------


@needs_gxx
def test_ddr_build_on_emu_equals_the_rom_build_and_the_golden_model(ddr_build, ddr_emu, tiny_emu):
    manifest = verify_build(ddr_build)
    assert ddr_emu.core.ddr_weights.size == manifest["ddr"]["words"]  # the buffer is sized to the image
    assert np.array_equal(np.asarray(ddr_emu.core.ddr_weights), ddr_image.read_ddr_image(ddr_build / DDR_FILE))
    rom_cache, ddr_cache = tiny_emu.new_cache(64), ddr_emu.new_cache(64)
    rom_logits, ddr_logits = tiny_emu.forward(IDS, rom_cache), ddr_emu.forward(IDS, ddr_cache)
    rom_cycles, ddr_cycles = tiny_emu.last_cycles(), ddr_emu.last_cycles()
    assert np.array_equal(ddr_logits, rom_logits)  # the same integer dots and fp32 sequence: bit for bit
    assert_within_float_noise(ddr_logits, golden_variant_logits(load_build(ddr_build), IDS), TOL)
    for _ in range(3):  # decode steps: the KV caches and logits stay identical
        t = int(np.argmax(ddr_logits))
        rom_logits, ddr_logits = tiny_emu.forward([t], rom_cache), ddr_emu.forward([t], ddr_cache)
        assert np.array_equal(ddr_logits, rom_logits)
        # a decode step is one block: nothing runs beside another block (and this tiny model's k and v are too short
        # to score its cached keys beside them: roma_core.cpp scores_beside_kv), so only the stream's stages differ
        rom_step, ddr_step = tiny_emu.last_cycles(), ddr_emu.last_cycles()
        assert {k: v for k, v in ddr_step.items() if k not in ("gemv", "lm_head", "embedding")} == {
            k: v for k, v in rom_step.items() if k not in ("gemv", "lm_head", "embedding")}
    assert np.array_equal(ddr_cache.kv.rows(ddr_cache.capacity), rom_cache.kv.rows(rom_cache.capacity))
    # the stream moves cycles in the GEMV, lm-head and embedding stages (a head streamed through several weight
    # ports can take fewer than one on-chip tile), and in a prefill the stages beside the GEMVs: a block's queries run
    # beside the FFN of the blocks before where that FFN reads no DDR (roma_core.cpp ffn_beside_attention), so the ROM
    # build's FFN hides part of them and the DDR build's, which shares the memory with the KV reads on this board,
    # none; the norm, RoPE, SwiGLU and residual adds and the next GEMV's codes beside another block's GEMVs hide at
    # least as well behind the longer streamed ones. Nothing else moves
    assert ddr_cycles["gemv"] > rom_cycles["gemv"] and ddr_cycles["lm_head"] != rom_cycles["lm_head"]
    assert ddr_cycles["embedding"] > rom_cycles["embedding"]
    assert ddr_cycles["attention"] > rom_cycles["attention"]
    beside = ("norm", "rope", "activation", "residual", "act_quant")
    assert all(ddr_cycles[k] <= rom_cycles[k] for k in beside)
    assert ddr_cycles["act_quant"] < rom_cycles["act_quant"]
    moved = ("gemv", "lm_head", "embedding", "attention", *beside)
    assert {k: v for k, v in ddr_cycles.items() if k not in moved} == {
        k: v for k, v in rom_cycles.items() if k not in moved}


def gemv_paths(emu, run) -> dict[str, int]:
    """The tile GEMVs `run()` made the emulated board's library take, by path (EmuLibrary.gemv_paths)."""
    emu.forward([1], emu.new_cache(1))  # first: the emulated board switches to this backend's overlay and library
    lib = emu.device.library
    before = lib.gemv_paths()
    run()
    return {k: n - before[k] for k, n in lib.gemv_paths().items()}


@needs_gxx
def test_every_gemv_takes_the_packed_fast_path(ddr_emu, tiny_emu, ddr_build, tiny_build):
    """The slow fallbacks compute the same bits, so only the counts show a tensor that missed its packing."""
    # every tensor in ROM; layer 1, the untied head and the embedding in DDR
    for emu, build in ((tiny_emu, tiny_build), (ddr_emu, ddr_build)):
        cache = emu.new_cache(16)
        paths = gemv_paths(emu, lambda: [emu.forward(ids, cache) for ids in (IDS, [5], [6])])
        # a prefill of 8 tokens and two decode steps: 7 linears per layer and token, each its tensor's tiles (the
        # plan's PEs on chip, the DDR engine's a multiple of the weight ports), and the head's tiles per call (a DDR
        # head is streamed a tile per port at once, the ports' tiles of at most memory.DDR_TILE_MAX_ROWS rows in all)
        tensors = json.loads((build / "manifest.json").read_text())["tensors"]
        layer_tiles = sum(e["tiles"] for name, e in tensors.items() if name.startswith("blk."))
        head_tiles = (tensors.get("output") or tensors["token_embd"])["tiles"]
        assert head_tiles == (ddr_tiles(emu.config.vocab_size, 4) if emu is ddr_emu else 1)  # the U250's 4 ports
        assert paths == {"packed": layer_tiles * (len(IDS) + 2) + 3 * head_tiles, "rom_unpacked": 0,
                         "ddr_stream": 0}


@needs_gxx
def test_the_core_refuses_to_run_without_its_ddr_image(ddr_emu):
    buf = ddr_emu.core.ddr_weights
    before = ddr_emu.forward(IDS, ddr_emu.new_cache(64))
    saved = int(buf[3])
    buf[3] = saved ^ 1  # another image's checksum in the header
    buf.flush()
    try:
        with pytest.raises(RomaError, match="does not hold this build's DDR weight image"):
            ddr_emu.forward(IDS, ddr_emu.new_cache(64))
    finally:
        buf[3] = saved
        buf.flush()
    assert np.array_equal(ddr_emu.forward(IDS, ddr_emu.new_cache(64)), before)


@needs_gxx
def test_every_buffer_is_in_the_memory_its_port_reaches_on_an_alveo_card(ddr_emu, ddr_build):
    """The U250's ports are linked to banks of their own (boards.json memory_banks, alveo_link_u250.cfg): the
    emulated card reads each argument only from its bank, so the driver puts each buffer there and each weight
    port's bank holds a copy of the image."""
    manifest = verify_build(ddr_build)
    want = argument_memories(manifest["board"])
    assert want["ddr_weights_1"] == "DDR[1]" and want["kv_cache_1"] == "DDR[3]"  # the U250's
    assert want["kv_cache_2"] == "DDR[0]" and want["kv_cache_3"] == "DDR[2]"  # the second position set's
    core, device = ddr_emu.core, ddr_emu.device
    cache = ddr_emu.new_cache(64)
    before = ddr_emu.forward(IDS, cache)

    def memory_of(buffer) -> str:
        (tag,) = [t for t, m in device.banks.items()
                  if m.base_address <= buffer.device_address < m.base_address + m.size]
        return tag

    image = ddr_image.read_ddr_image(ddr_build / DDR_FILE)
    for argument in ("ddr_weights", "ddr_weights_1", "ddr_weights_2", "ddr_weights_3"):
        assert memory_of(core.weight_images[argument]) == want[argument]
        assert np.array_equal(np.asarray(core.weight_images[argument]), image)
    assert len({id(b) for b in core.weight_images.values()}) == 4  # a copy per bank
    for argument, buffer in (("tokens_in", core.tokens_in), ("logits", core.logits), ("status", core.status_buf),
                             ("lora_staging", core.lora_staging), ("uram_weights", core.uram_weights)):
        assert memory_of(buffer) == want[argument], argument
    layout = cache.kv.layout
    assert layout.sets == 2 and len(cache.kv.buffers) == layout.buffers  # the tiny model on a U250: two sets
    assert [memory_of(b) for b in cache.kv.buffers] == [want[a] for a in layout.arguments]
    # a weight port given the first port's copy (in another bank) reads nothing of it: the call is refused
    own = core.weight_images["ddr_weights_1"]
    core.weight_images["ddr_weights_1"] = core.ddr_weights
    try:
        with pytest.raises(RomaError, match=re.escape("ddr_weights_1 = ") + r".* does not point into a buffer in "
                                            + re.escape("DDR[1], the memory its port reaches")):
            ddr_emu.forward(IDS, ddr_emu.new_cache(64))
    finally:
        core.weight_images["ddr_weights_1"] = own
    assert np.array_equal(ddr_emu.forward(IDS, ddr_emu.new_cache(64)), before)


def test_missing_or_corrupt_ddr_image_is_refused_naming_the_file(ddr_build, tmp_path):
    from roma_runtime.backends.emulated import EmuBackend
    from roma_runtime.device.driver import read_ddr_image

    bad = tmp_path / "bad"
    shutil.copytree(ddr_build, bad)
    blob = bytearray((bad / DDR_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0x40
    (bad / DDR_FILE).write_bytes(bytes(blob))
    manifest = json.loads((bad / "manifest.json").read_text())
    for load in (verify_build, load_build, lambda b: EmuBackend(b, progress=False),
                 lambda b: read_ddr_image(b, manifest)):  # the last: RomaOverlay's path, next to a bitstream
        with pytest.raises(RomaError, match=rf"{re.escape(str(bad / DDR_FILE))} is corrupt"):
            load(bad)
    with pytest.raises(RomaError, match=rf"DDR weight image {re.escape(str(bad / DDR_FILE))} is corrupt "
                                        r"\(payload checksum mismatch\)"):
        load_build(bad, verify=False)  # its own header checksum, without the manifest's
    (bad / DDR_FILE).unlink()
    for load in (verify_build, lambda b: EmuBackend(b, progress=False), lambda b: read_ddr_image(b, manifest)):
        with pytest.raises(RomaError, match=rf"{re.escape(str(bad / DDR_FILE))} is missing"):
            load(bad)


@needs_gxx
def test_a_kv260_streams_the_head_on_the_layers_ddr_engine(tiny_models, tmp_path):
    """On a KV260 (128-bit weight ports) a 4-bit G32 step is one port word, so an untied head of the layers' 4 bits,
    streamed from DDR in its own 24 tiles, runs on the DDR engine of layer 1 (model_header.head_on_layers_engine,
    roma_core.cpp head_on_layers: the engine takes the tiles at run time). The synthesis object holds that one DDR
    engine beside the ROM one, as the plan counts it, and the emulated board's logits are the golden model's."""
    from roma_runtime.backends.emulated import EmuBackend
    from roma_runtime.compiler.placement import footprint

    out = tmp_path / "kv260"
    compile_model(tiny_models["q4_1"], out, progress=False, ddr="1,head",
                  **{**DEFAULT_BUILD, "board": "kv260", "embedding_bits": 4})
    header = (out / "roma_model.h").read_text()
    assert "constexpr int UNIT_WQ[N_LAYERS] = {0, 1};" in header and "constexpr int UNIT_OUTPUT = 1;" in header
    assert f"constexpr int TILES_OUTPUT = {ddr_tiles(49152, 4)};" in header and "TILES_WQ[N_LAYERS] = {4, 4};" in header
    report = footprint.verdict(footprint.measure(out))
    assert report["ok"] and report["engines"] == {"engines": 2, "configurations": 2}
    assert report["kernels"]["DDR-streamed GEMV"]["rtl_instances"] == 1
    emu = EmuBackend(out, progress=False)
    logits = emu.forward(IDS, emu.new_cache(64))
    assert_within_float_noise(logits, golden_variant_logits(load_build(out), IDS), TOL)
    assert emu.last_cycles()["lm_head"] > 0


# --- SmolLM2 at 2 bits on a KV260 -------------------------------------------------------------------------------


@needs_gxx
def test_smollm2_2bit_on_kv260_streams_from_ddr_and_matches_the_golden_model(smollm2, smollm2_2bit_build, tmp_path):
    """SmolLM2-135M at 2 bits (RTN G64) placed for a KV260 (its default 2K context): the core's own buffers take
    the BRAM, so every layer and the tied lm head stream from DDR. On the emulated board the logits and the greedy token are within the golden quant
    model's float noise on the same build, as at 2 bits on chip (test_emu_backend). Compiled from that build: its
    weights pass through, the RTN G64 weights a compile of the GGUF gives."""
    from roma_runtime.backends.emulated import EmuBackend
    from roma_runtime.tokenizer import Tokenizer

    out = tmp_path / "smollm2-2bit-kv260"
    manifest = compile_model(load_build(smollm2_2bit_build), out, bits=2, group=64, board="kv260", progress=False)
    assert {e["method"] for e in manifest["tensors"].values()} == {"passthrough"}
    assert manifest["plan"]["layers_on_chip"] == [] and manifest["plan"]["layers_streamed"] == list(range(30))
    assert is_ddr(manifest["tensors"]["token_embd"]) and not (out / "token_embd.bin").exists()
    got = []
    emu = EmuBackend(out, progress=False)
    ids = Tokenizer.from_model(smollm2).encode("The capital of France is")
    paths = gemv_paths(emu, lambda: got.append(emu.forward(ids, emu.new_cache(64))))
    got = np.asarray(got[0], np.float32).reshape(-1)
    # every GEMV, the tied lm head streamed from DDR (in tiles) included, takes the packed fast path; a DDR tensor
    # has a tile per weight port (the KV260's 4) or a multiple
    assert {e["tiles"] for name, e in manifest["tensors"].items() if name.startswith("blk.") and is_ddr(e)} == {4}
    assert paths == {"packed": 4 * 7 * 30 * len(ids) + ddr_tiles(49152, 4), "rom_unpacked": 0, "ddr_stream": 0}
    assert_within_float_noise(got, golden_variant_logits(load_build(out), ids), TOL)
    cycles = emu.last_cycles()
    # DDR-bound: the 8-bit lm head streams 49152 x 576 codes + scales through four 16-byte ports
    assert cycles["lm_head"] > 49152 * 576 // 16 // 4 and cycles["gemv"] > cycles["lm_head"]
    # a prefill block's queries run beside the FFN of the block before, here one that streams from DDR: the KV260's
    # DDR peak covers its weight ports and its KV port at once (Board.kv_beside_weights), so only the rows' writes and
    # the first token's queries are left in the stage; the same tokens one at a time (one block each, nothing beside)
    # take every query's cycles
    cache, one_by_one = emu.new_cache(64), 0
    for t in ids:
        last = emu.forward([t], cache)
        one_by_one += emu.last_cycles()["attention"]
    assert cycles["attention"] * 2 < one_by_one
    # a token after the first scores its cached keys beside its k and v GEMVs (roma_core.cpp token_qkv), then its own
    # key: the logits of the whole prefill, bit for bit
    assert np.array_equal(np.asarray(last, np.float32).reshape(-1), got)
