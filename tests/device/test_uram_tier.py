"""The URAM weight tier end to end: the plan's `uram` option, a build whose URAM tensors live in uram_weights.bin
(no ROM initialiser for them), the core's CMD_LOAD_WEIGHTS writing them into its URAM banks on the emulated board
(refused runs before, bit-identical to the same build in ROM after), the driver's load from RomaOverlay and its
refusals of a bad image, with the core's state intact.

The tiny model is the Q4_1 GGUF of conftest.tiny_models; its ROM build is the session's default build (tiny_build),
and the URAM build (tiny_uram_build) is the same compile with uram="1,head": layer 1 and the untied lm head are in
URAM, the embedding in BRAM ROM, and layer 0 is filled "ffn-pair" (its w_gate in BRAM ROM, its other linears in URAM),
so its gate and up run at once on the ROM and URAM engines.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from float_noise import assert_within_float_noise, golden_variant_logits
from roma_runtime import RomaError
from roma_runtime.artifact import brom_image as brom
from roma_runtime.artifact import uram_image
from roma_runtime.artifact.build import BRAM_ROM, URAM_FILE, URAM_LOAD_ONCE, is_uram, uram_layout, verify_build
from roma_runtime.compiler.placement.plan import make_plan
from roma_runtime.model.loader import load_build

pytest.importorskip("pynq")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None or shutil.which("make") is None,
                               reason="the emulated board needs g++ and make")

TOL = 2e-3  # max|dl| / max|l| against the golden model, as tests/backends/test_emu_backend.py
IDS = [1, 504, 3575, 282, 4649, 314, 7, 1000]
LINEARS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")


@pytest.fixture(scope="module")
def tiny_config(tiny_models):
    from roma_runtime.model.loader import load_model

    return load_model(tiny_models["q4_1"]).config


@pytest.fixture(scope="module")
def uram_build(tiny_uram_build):
    return tiny_uram_build


@pytest.fixture(scope="module")
def uram_emu(uram_build):
    from roma_runtime.backends.emulated import EmuBackend

    return EmuBackend(uram_build, progress=False)


# --- the plan and the build ---------------------------------------------------------------------------------------


def test_plan_puts_the_units_asked_for_in_uram(tiny_config):
    plan = make_plan(tiny_config, "u250", lora_rank=0, uram="1,head")
    where = {t.name: t.placement for t in plan.tensors}
    assert {where[f"layers.1.{lin}"] for lin in LINEARS} == {URAM_LOAD_ONCE} and where["output"] == URAM_LOAD_ONCE
    # the layers take URAM, so layer 0 is filled "ffn-pair": its gate in ROM, the rest in URAM (gate and up at once)
    assert plan.fill == "ffn-pair" and where["layers.0.w_gate"] == BRAM_ROM and where["token_embedding"] == BRAM_ROM
    assert {where[f"layers.0.{lin}"] for lin in LINEARS if lin != "w_gate"} == {URAM_LOAD_ONCE}
    assert plan.fits_on_chip and plan.to_dict()["uram_forced"] == [1, "head"]
    assert "put in URAM on purpose (--uram): layer 1, head" in plan.render()
    with pytest.raises(RomaError, match="--uram: layer 1 does not fit the pynq-z2's URAM budget of 0 blocks"):
        make_plan(tiny_config, "pynq-z2", lora_rank=0, uram="1")
    with pytest.raises(RomaError, match="--ddr and --uram both name layer 1"):
        make_plan(tiny_config, "u250", lora_rank=0, uram="1", ddr="1,head")
    with pytest.raises(RomaError, match="--uram names layer 7, but .* has layers 0-1"):
        make_plan(tiny_config, "u250", lora_rank=0, uram="7")


def test_uram_build_header_and_image_say_the_plans_place(uram_build, tiny_build):
    manifest = verify_build(uram_build)
    tensors = manifest["tensors"]
    in_uram = [n for n, e in tensors.items() if is_uram(e)]
    assert in_uram == [f"blk.{i}.{lin}" for i in (0, 1) for lin in LINEARS if (i, lin) != (0, "w_gate")] + ["output"]
    files = set(manifest["files"])
    for n, e in tensors.items():  # a URAM tensor has no ROM image or initialiser: it is a slice of the load image
        if n in in_uram:
            assert e["image"] == URAM_FILE and e["init"] is None and e["rom_bytes"] == 0 and e["uram_words"] > 0
            assert not (uram_build / f"{n}.bin").exists() and not (uram_build / f"{n}.dat").exists()
        else:
            assert {f"{n}.bin", f"{n}.dat"} <= files and e.get("uram_offset") is None
    words = uram_image.read_uram_image(uram_build / URAM_FILE, uram_layout(manifest))
    assert manifest["uram"]["words"] == words.size and manifest["uram"]["checksum"] == int(words[3])
    assert manifest["uram"]["tensors"] == in_uram and manifest["sizes"]["uram_bytes"] == 4 * (words.size - 4)
    # the header: each tensor's URAM offset (-1 off URAM), the image's identity, the URAM engines apart from the
    # ROM ones, and ROM initialisers for the BRAM ROM banks only
    header = (uram_build / "roma_model.h").read_text()
    assert f"constexpr long long URAM_WORDS = {words.size};" in header
    assert f"constexpr unsigned URAM_CHECKSUM = 0x{int(words[3]):08x}u;" in header
    for lin in LINEARS:
        offsets = [tensors[f"blk.{i}.{lin}"].get("uram_offset") for i in (0, 1)]
        assert f"constexpr long long URAM_{lin.upper()}[N_LAYERS] = {{{offsets[0] or -1}, {offsets[1]}}};" in header
        # engines by first tensor: the URAM one (wq of layer 0) is 0, the ROM one (layer 0's gate) 1
        units = "{1, 0}" if lin == "w_gate" else "{0, 0}"
        assert f"constexpr int UNIT_{lin.upper()}[N_LAYERS] = {units};" in header
    assert "constexpr int FFN_PAIR_GATE = 1;" in header and "constexpr int FFN_PAIR_UP = 0;" in header
    assert f"constexpr long long URAM_OUTPUT = {tensors['output']['uram_offset']};" in header
    assert "constexpr long long URAM_TOKEN_EMBD = -1;" in header
    included = re.findall(r'#include "(.+)\.dat"', header)
    assert list(dict.fromkeys(included)) == [n for n in tensors if n not in in_uram]
    assert "constexpr int UNIT_TOKEN_EMBD = 2;" in header and "constexpr int UNIT_OUTPUT = 3;" in header
    assert set(re.findall(r"ROMA_UNIT_\w+\((\d+)\)", header)) == {"1", "2"}  # no initialiser for a URAM bank
    # the same weights as the all-ROM build, read back from the load image
    rom, got = load_build(tiny_build), load_build(uram_build)
    for a, b in [(rom.weights.layers[1].wq, got.weights.layers[1].wq), (rom.weights.output, got.weights.output)]:
        assert np.array_equal(a.codes, b.codes) and np.array_equal(a.scales.view(np.uint16), b.scales.view(np.uint16))
        assert np.array_equal(a.minimums.view(np.uint16), b.minimums.view(np.uint16))


def test_uram_layout_round_trips_and_checksums():
    from roma_runtime.compiler.quantization.quantize import quantize_tensor

    rng = np.random.default_rng(7)
    # fp16 and q8 scale arrays, even and odd entry counts (7 rows: an odd last word)
    for bits, group, rows, tiles, scales in ((4, 32, 10, 2, "fp16"), (2, 64, 9, 3, "q8"), (3, 128, 7, 1, "q8")):
        qm = quantize_tensor(rng.standard_normal((rows, 384)).astype(np.float32), bits, group, "rtn", None, "t",
                             scales)[0]
        img = brom.pack(qm, tiles)
        words = uram_image.uram_words(img)
        back = uram_image.uram_unpack(words, bits, group, rows, 384, tiles, scales=img.scale_format)
        assert img.scale_format == scales and back.sha256() == img.sha256()
    # the checksum: a plain sum misses swapped words, the position-weighted part does not
    w = np.array([1, 2, 3, 0xFFFFFFFF], np.uint32)
    assert uram_image.tensor_checksum(w) != uram_image.tensor_checksum(w[[1, 0, 2, 3]])
    a, b = sum(int(v) for v in w) % 2**32, sum(int(v) * (3 - j) for j, v in enumerate(w)) % 2**32
    assert uram_image.tensor_checksum(w) == a ^ b
    with pytest.raises(RomaError, match="has 20 words, not 19"):
        uram_image.uram_unpack(np.zeros(19, np.uint32), 4, 32, 4, 32, 1)


# --- the emulated board -------------------------------------------------------------------------------------------


@needs_gxx
def test_uram_build_on_emu_equals_the_rom_build_and_the_golden_model(uram_build, uram_emu, tiny_emu):
    rom_cache, uram_cache = tiny_emu.new_cache(64), uram_emu.new_cache(64)
    rom_logits, uram_logits = tiny_emu.forward(IDS, rom_cache), uram_emu.forward(IDS, uram_cache)
    assert np.array_equal(uram_logits, rom_logits)  # the same words in URAM banks: bit for bit
    assert_within_float_noise(uram_logits, golden_variant_logits(load_build(uram_build), IDS), TOL)
    rom_cycles, uram_cycles = tiny_emu.last_cycles(), uram_emu.last_cycles()
    # the same datapath reads them, but layer 0's gate (ROM bank) and its other linears (URAM bank) are one engine of
    # two banks (ffn-pair; roma_core.cpp TWO_BANKS): gate and up run at once, and in a prefill block of two tokens
    # every other tensor of the engine splits its rows over its bank's two ports, on both banks' slots. So the GEMV
    # stage is shorter, by less than half (the split halves the steps, not the candidate stages). In a prefill the
    # units that run beside the GEMVs (the next or previous block's norm, RoPE, SwiGLU and residual adds, the codes of
    # the next GEMV, and attention) count what the GEMVs do not hide, so they may grow, by less than the GEMVs saved;
    # every other stage is the same
    beside = ("norm", "rope", "activation", "residual", "act_quant", "attention")
    assert {k: v for k, v in uram_cycles.items() if k != "gemv" and k not in beside} == {
        k: v for k, v in rom_cycles.items() if k != "gemv" and k not in beside}
    saved = rom_cycles["gemv"] - uram_cycles["gemv"]
    assert rom_cycles["gemv"] / 10 < saved < rom_cycles["gemv"] / 2
    assert 0 <= sum(uram_cycles[k] - rom_cycles[k] for k in beside) < saved
    for _ in range(2):
        t = int(np.argmax(uram_logits))
        rom_logits, uram_logits = tiny_emu.forward([t], rom_cache), uram_emu.forward([t], uram_cache)
        assert np.array_equal(uram_logits, rom_logits)
        # a decode step is one block: nothing runs beside another block (and this tiny model's k and v are too short
        # to score its cached keys beside them: roma_core.cpp scores_beside_kv), so only the GEMV stage differs
        rom_step, uram_step = tiny_emu.last_cycles(), uram_emu.last_cycles()
        assert {k: v for k, v in uram_step.items() if k != "gemv"} == {k: v for k, v in rom_step.items() if k != "gemv"}
        assert uram_step["gemv"] < rom_step["gemv"]


@needs_gxx
def test_a_build_without_uram_refuses_the_weight_load(tiny_emu):
    tiny_emu.forward(IDS[:1], tiny_emu.new_cache(8))  # its overlay on the emulated board (it holds one at a time)
    with pytest.raises(RomaError, match=r"status ERR_BAD_COMMAND"):
        tiny_emu.core.load_weights(np.zeros(8, np.uint32), 0)


@needs_gxx
def test_the_core_refuses_to_run_before_the_weight_load(uram_build, uram_emu):
    """A fresh download (the emulated board loads the build, its URAM banks hold nothing): run commands are refused
    until CMD_LOAD_WEIGHTS succeeded; RomaOverlay.download loads them again itself."""
    core, overlay = uram_emu.core, uram_emu.overlay
    before = uram_emu.forward(IDS, uram_emu.new_cache(64))
    uram_emu.device.library.load_build(uram_build)  # what a download does to the core, without RomaOverlay's load
    with pytest.raises(RomaError, match=r"its URAM weight banks are not loaded .*ERR_WEIGHTS_NOT_LOADED"):
        uram_emu.forward(IDS, uram_emu.new_cache(64))
    words = overlay.uram_image.size - uram_image.URAM_HEADER_WORDS
    cycles = core.load_weights(overlay.uram_image, verify_build(uram_build)["uram"]["checksum"])
    assert cycles == core.stage_cycles["weight_load"] > 3 * words  # check, write and read back, a word a cycle
    assert int(core.status[core.constants["STATUS_CHECKSUM"]]) == verify_build(uram_build)["uram"]["checksum"]
    assert np.array_equal(uram_emu.forward(IDS, uram_emu.new_cache(64)), before)
    overlay.download()  # a board's download: URAM empty again, and RomaOverlay loads it
    assert np.array_equal(uram_emu.forward(IDS, uram_emu.new_cache(64)), before)


@needs_gxx
def test_a_bad_load_image_is_refused_with_the_state_intact(uram_build, uram_emu):
    core, overlay = uram_emu.core, uram_emu.overlay
    before = uram_emu.forward(IDS, uram_emu.new_cache(64))
    good = overlay.uram_image
    checksum = verify_build(uram_build)["uram"]["checksum"]
    corrupt = good.copy()
    corrupt[good.size // 2] ^= 0x40  # a payload word: the core's check pass finds it before writing
    other = good.copy()
    other[0] ^= 1  # the header's magic
    try:
        for image, what in ((corrupt, "its words do not sum to the checksum"), (other, "header magic")):
            overlay.uram_image = image
            with pytest.raises(RomaError, match=r"the URAM weights of this overlay did not load, so it cannot run: "
                                                rf"roma_core refused the call: .*{what}.*ERR_WEIGHTS_IMAGE") as e:
                overlay.load_weights()
            assert "uram_weights.bin" in e.value.hint
            assert np.array_equal(uram_emu.forward(IDS, uram_emu.new_cache(64)), before)  # nothing was written
        with pytest.raises(RomaError, match="read back checksum .* but the build's is"):
            core.load_weights(good, checksum ^ 1)  # what the driver says when the banks read back another sum
    finally:
        overlay.uram_image = good
    # a corrupt file next to the bitstream: refused by its manifest checksum before the overlay opens
    from roma_runtime.backends.emulated import EmuBackend

    bad = uram_build.parent / "bad"
    shutil.copytree(uram_build, bad)
    blob = bytearray((bad / URAM_FILE).read_bytes())
    blob[len(blob) // 2] ^= 0x40
    (bad / URAM_FILE).write_bytes(bytes(blob))
    for load in (verify_build, lambda b: EmuBackend(b, progress=False)):
        with pytest.raises(RomaError, match=rf"{re.escape(str(bad / URAM_FILE))} is corrupt"):
            load(bad)
    with pytest.raises(RomaError, match=r"URAM load image .* is corrupt \(its tensors' checksum"):
        load_build(bad, verify=False)
