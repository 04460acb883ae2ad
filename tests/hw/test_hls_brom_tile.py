"""C simulation of the B-ROM tile and the activation quantizer against the Python golden model.

Builds hw/hls/tb/tb_brom_tile.cpp with the hw/hls Makefile (g++), writes golden data with
hw/hls/tb/gen_brom_tile.py and requires zero mismatches on every integer quantity (int8 activations, their
scales, group dot products, activation sums) for both datapaths, and y within the testbench's stated bound;
with fp16 and q8 scale ROMs (q8: also bit-identical to the same matrix with fp16 scales, and the decoder
exhaustively equal to numpy's).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import hls_tools
import numpy as np
import pytest

from roma_runtime.compiler.placement.logic import ddr_stream
from roma_runtime.errors import RomaError

pytestmark = hls_tools.needs_gxx


def _gen():
    return hls_tools.load_generator("brom_tile")


@pytest.fixture(scope="module")
def build(hls_build):
    return hls_tools.build_tb(hls_build, "tb_brom_tile")


def run_tb(build: Path, data: Path) -> tuple[int, int, int, str]:
    return hls_tools.run_tb(build, "tb_brom_tile", data)


@pytest.fixture(scope="module")
def random_cases(tmp_path_factory):
    data = tmp_path_factory.mktemp("golden_random")
    lines = _gen().write_cases(data, random=True, model=False)
    return data, lines


def test_every_bits_and_group_bit_exact(build, random_cases):
    data, lines = random_cases
    for scales in ("fp16", "q8"):
        assert {(int(l.split()[1]), int(l.split()[2])) for l in lines if l.split()[7] == scales} == {
            (b, g) for b in (2, 3, 4, 8) for g in (32, 64, 128)}
    rc, mismatches, compared, out = run_tb(build, data)
    print(out)
    assert mismatches == 0 and rc == 0, out
    assert compared > 65536 + 2 * 33 * 256 + 27 * 3 * 2 * 12  # the half and q8 tables, every case, 2 datapaths
    assert "half_to_float: 0 mismatches" in out
    assert "q8_to_half: 0 mismatches of 16896" in out
    assert len(re.findall(r" q8 +mismatches lut=0 dsp=0 csim-fast=0 ddr=0", out)) == 14
    # the DDR stream at both port widths: the kernel's chunk II is the one the logic estimate counts lanes with
    rows = re.findall(r"b=(\d) G=(\d+) +(\d+)x\d+ +tiles=(\d+) (\w+) .* ddr@128=(\d+) \((\w+), chunk II (\d+)\) "
                      r"ddr@512=(\d+) \((\w+), chunk II (\d+)\) ddr@3x128=(\d+)", out)
    assert len(rows) == 28 and {r[6] for r in rows} | {r[9] for r in rows} == {"lanes", "serial"}
    for b, g, r, t, scales, c128, _, ii128, c512, _, ii512, c3 in rows:
        tile_rows = [int(r) // int(t)]
        assert [int(ii128), int(ii512)] == [ddr_stream(int(b), int(g), scales, tile_rows, w).ii for w in (128, 512)]
        # three ports: rounds of three tiles, each round one tile's cycles (the quantizer and candidates once)
        t, rounds, c128, c3 = int(t), -(-int(t) // 3), int(c128), int(c3)
        if t == rounds:
            assert c3 == c128
        else:
            tile, rest = divmod(c128 - c3, t - rounds)
            assert rest == 0 and c3 > rounds * tile
    assert any(int(r[8]) < int(r[5]) for r in rows)  # a wider port, fewer cycles per GEMV
    assert any(int(r[11]) < int(r[5]) for r in rows)  # more ports, fewer cycles per GEMV


@pytest.mark.slow
def test_smollm2_layer0_wq(build, tmp_path):
    try:
        lines = _gen().write_cases(tmp_path, random=False, model=True)
    except RomaError as e:
        pytest.skip(f"SmolLM2-135M is not installed: {e.message}")
    assert lines == ["smollm2_l0_wq 4 32 576 576 4 4 fp16"]
    rc, mismatches, compared, out = run_tb(build, tmp_path)
    print(out)
    assert mismatches == 0 and rc == 0, out
    assert compared >= 2 * 4 * (576 + 576 * 18 + 576)
    assert re.search(r"cycles/GEMV lut=\d+", out)


def test_testbench_catches_wrong_results(build, random_cases, tmp_path):
    data, lines = random_cases
    name = lines[0].split()[0]
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    (bad / "cases.txt").write_text(lines[0] + "\n")
    (bad / "half.f32").unlink()
    dot = np.fromfile(bad / f"{name}.dot.i32", dtype="<i4")
    dot[5] += 1
    dot.tofile(bad / f"{name}.dot.i32")
    y = np.fromfile(bad / f"{name}.y.f32", dtype="<f4")
    i = int(np.argmax(np.abs(y)))
    y[i] = -y[i]
    y.tofile(bad / f"{name}.y.f32")
    rc, mismatches, _, out = run_tb(build, bad)
    assert mismatches == 4 and rc == 4, out  # one dot and one y, on each of the two datapaths


def _one_case(data, lines, tmp_path, scales):
    """A copy of the golden data with one case of the scale format: (folder, case name)."""
    line = next(l for l in lines if l.split()[7] == scales)
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    (bad / "cases.txt").write_text(line + "\n")
    return bad, line.split()[0]


@pytest.mark.parametrize("scales", ("fp16", "q8"))
def test_testbench_rejects_a_corrupt_rom_image(build, random_cases, tmp_path, scales):
    bad, name = _one_case(*random_cases, tmp_path, scales)
    blob = bytearray((bad / f"{name}.bin").read_bytes())
    blob[-1] ^= 0x80
    (bad / f"{name}.bin").write_bytes(bytes(blob))
    rc, mismatches, _, out = run_tb(build, bad)
    assert rc != 0 and mismatches >= 1 and "payload checksum mismatch" in out, out


def test_testbench_rejects_a_q8_exponent_out_of_range(build, random_cases, tmp_path):
    """A well-formed q8 image (valid checksums) whose row exponent is past Q8_EXP_MAX: the C loader refuses it."""
    from roma_runtime.artifact import brom_image as brom

    bad, name = _one_case(*random_cases, tmp_path, "q8")
    img = brom.read_image(bad / f"{name}.bin")
    exps = img.exponents.copy()
    exps[0, 0] = (exps[0, 0] & 0xFF) | (40 << 8)
    brom.write_image(brom.BromImage(img.bits, img.group, img.rows, img.cols, img.tiles, img.planes, None, None, "q8",
                                    img.params, exps), bad, name)
    rc, mismatches, _, out = run_tb(build, bad)
    assert rc != 0 and mismatches >= 1 and "a q8 row exponent is out of range" in out, out


def test_testbench_compares_q8_with_its_fp16_twin(build, random_cases, tmp_path):
    """The q8 case's reference: the same values with fp16 scales. A twin one fp16 ulp off is caught (the decoded
    scales differ, and so would y)."""
    from roma_runtime.artifact import brom_image as brom
    from roma_runtime.model.weights import QuantizedMatrix

    bad, name = _one_case(*random_cases, tmp_path, "q8")
    img = brom.read_image(bad / f"{name}.fp16.bin")
    twin = brom.unpack(img)
    scales = twin.scales.copy()
    scales.view(np.uint16)[5, 0] += 1
    brom.write_image(brom.pack(QuantizedMatrix(twin.codes, scales, twin.minimums, twin.bits, twin.group), img.tiles),
                     bad, f"{name}.fp16")
    rc, mismatches, _, out = run_tb(build, bad)
    assert rc != 0 and mismatches >= 1 and "does not decode to its fp16 twin" in out, out


def test_make_csim_target(hls_csim):
    """`make csim` generates the golden data and runs every testbench (model case skipped here). It compiles
    them in the session's HLS build folder (from the session's start, conftest's hls_csim), where the other
    test_hls_* files find them up to date: they compile without a warning here."""
    r = hls_csim
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tb_brom_tile: 0 mismatches of" in r.stdout
    assert "warning" not in r.stderr, r.stderr


SYNTH_TOP = r"""
#include <cstdio>
#include "roma/act_quant.h"
#include "roma/brom_tile.h"
constexpr roma::ScaleFormat SF = roma::ScaleFormat::SCALE_FORMAT;
typedef roma::BromTileConfig<4, 128, 64, 3, roma::Datapath::LutSelect, SF> C;
static const roma::rom_word_t planes[2][C::PLANE_WORDS] = {
#define ROMA_BROM_PLANES
{
#define ROMA_BROM_TILE 0
#include "w.dat"
#undef ROMA_BROM_TILE
}, {
#define ROMA_BROM_TILE 1
#include "w.dat"
#undef ROMA_BROM_TILE
}
#undef ROMA_BROM_PLANES
};
static const roma::scale_word_t prm[2][C::PARAMS] = {
#define SECTION_PRM
{
#define ROMA_BROM_TILE 0
#include "w.dat"
#undef ROMA_BROM_TILE
}, {
#define ROMA_BROM_TILE 1
#include "w.dat"
#undef ROMA_BROM_TILE
}
#undef SECTION_PRM
};
static const roma::scale_word_t aux[2][C::AUX] = {
#define SECTION_AUX
{
#define ROMA_BROM_TILE 0
#include "w.dat"
#undef ROMA_BROM_TILE
}, {
#define ROMA_BROM_TILE 1
#include "w.dat"
#undef ROMA_BROM_TILE
}
#undef SECTION_AUX
};
int main() {
  float x[128], y[8], a[2];
  roma::act_t xq[128];
  roma::acc_t dot[2][C::PARAMS], xs[2];
  roma::Cycles cyc;
  if (std::fread(x, sizeof(float), 128, stdin) != 128) return 2;
  roma::act_quant<128, 64>(128, x, xq, a, cyc);
  roma::brom_gemv_tiles<2, 4, 128, 64, 3, roma::Datapath::LutSelect, false, SF>(xq, a, planes, prm, aux, y, dot, xs,
                                                                               cyc);
  std::fwrite(y, sizeof(float), 8, stdout);
  return 0;
}
"""


@pytest.mark.parametrize("scales", ("fp16", "q8"))
def test_dat_initializers_compile_as_the_synthesis_rom(tmp_path, scales):
    """The synthesis path: ROM arrays initialised from NAME.dat (with __SYNTHESIS__ defined) give golden y."""
    from roma_runtime.artifact import brom_image as brom
    from roma_runtime.compiler.quantization.quantize import quantize_rtn
    from roma_runtime.golden import numerics
    from roma_runtime.model.weights import QuantizedMatrix

    rng = np.random.default_rng(3)
    if scales == "q8":
        qm = brom.unpack(brom.pack(quantize_rtn(rng.standard_normal((8, 128)).astype(np.float32), 3, 64,
                                                scales="q8")))
    else:
        qm = QuantizedMatrix(rng.integers(0, 8, (8, 128), dtype=np.uint8),
                             (rng.standard_normal((8, 2)) * 0.1).astype(np.float16),
                             (rng.standard_normal((8, 2)) * 0.1).astype(np.float16), 3, 64)
    brom.write_image(brom.pack(qm, 2), tmp_path, "w")
    x = rng.standard_normal((1, 128)).astype(np.float32)
    prm, aux = ("PARAMS", "EXPONENTS") if scales == "q8" else ("SCALES", "MINIMUMS")
    top = (SYNTH_TOP.replace("SCALE_FORMAT", "Q8" if scales == "q8" else "Fp16")
           .replace("SECTION_PRM", f"ROMA_BROM_{prm}").replace("SECTION_AUX", f"ROMA_BROM_{aux}"))
    r = hls_tools.compile_synth(tmp_path, top, run=True, extra=[f"-I{tmp_path}"], input=x.tobytes(),
                                wextra=False)
    assert r.returncode == 0
    y = np.frombuffer(r.stdout, dtype=np.float32)
    golden = numerics.quantized_matmul(numerics.PreparedMatrix(qm), x)[0]
    np.testing.assert_allclose(y, golden, rtol=0, atol=(128 + 2 + 8) * 2.0**-24 * np.abs(golden).sum())
