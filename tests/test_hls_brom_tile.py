"""C simulation of the B-ROM tile and the activation quantizer against the Python golden model.

Builds hw/hls/tb/tb_brom_tile.cpp with the hw/hls Makefile (g++), writes golden data with
hw/hls/tb/gen_brom_tile.py and requires zero mismatches on every integer quantity (int8 activations, their
scales, group dot products, activation sums) for both datapaths, and y within the testbench's stated bound.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import hls_tools
import numpy as np
import pytest

from roma_runtime.errors import RomaError

pytestmark = hls_tools.needs_gxx


def _gen():
    return hls_tools.load_generator("brom_tile")


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    return hls_tools.build_tb(tmp_path_factory.mktemp("hls_build"), "tb_brom_tile")


def run_tb(build: Path, data: Path) -> tuple[int, int, int, str]:
    return hls_tools.run_tb(build, "tb_brom_tile", data)


@pytest.fixture(scope="module")
def random_cases(tmp_path_factory):
    data = tmp_path_factory.mktemp("golden_random")
    lines = _gen().write_cases(data, random=True, model=False)
    return data, lines


def test_every_bits_and_group_bit_exact(build, random_cases):
    data, lines = random_cases
    assert {(int(l.split()[1]), int(l.split()[2])) for l in lines} == {
        (b, g) for b in (2, 3, 4, 8) for g in (32, 64, 128)}
    rc, mismatches, compared, out = run_tb(build, data)
    print(out)
    assert mismatches == 0 and rc == 0, out
    assert compared > 65536 + 13 * 3 * 2 * 12  # the half table, and every case on both datapaths
    assert "half_to_float: 0 mismatches" in out


@pytest.mark.slow
def test_smollm2_layer0_wq(build, tmp_path):
    try:
        lines = _gen().write_cases(tmp_path, random=False, model=True)
    except RomaError as e:
        pytest.skip(f"SmolLM2-135M is not installed: {e.message}")
    assert lines == ["smollm2_l0_wq 4 32 576 576 4 4"]
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


def test_testbench_rejects_a_corrupt_rom_image(build, random_cases, tmp_path):
    data, lines = random_cases
    name = lines[0].split()[0]
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    (bad / "cases.txt").write_text(lines[0] + "\n")
    blob = bytearray((bad / f"{name}.bin").read_bytes())
    blob[-1] ^= 0x80
    (bad / f"{name}.bin").write_bytes(bytes(blob))
    rc, mismatches, _, out = run_tb(build, bad)
    assert rc != 0 and mismatches >= 1 and "payload checksum mismatch" in out, out


def test_make_csim_target(build):
    """`make csim` generates the golden data and runs every testbench (model case skipped here)."""
    r = hls_tools.make(build, "csim", timeout=300, GEN_FLAGS="--no-model")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "tb_brom_tile: 0 mismatches of" in r.stdout


SYNTH_TOP = r"""
#include <cstdio>
#include "roma/act_quant.h"
#include "roma/brom_tile.h"
typedef roma::BromTileConfig<4, 128, 64, 3> C;
static const roma::rom_word_t planes[2][C::PLANE_WORDS] = {
#define ROMA_BROM_PLANES
#include "w.dat"
#undef ROMA_BROM_PLANES
};
static const roma::half_bits_t scales[2][C::PARAMS] = {
#define ROMA_BROM_SCALES
#include "w.dat"
#undef ROMA_BROM_SCALES
};
static const roma::half_bits_t mins[2][C::PARAMS] = {
#define ROMA_BROM_MINIMUMS
#include "w.dat"
#undef ROMA_BROM_MINIMUMS
};
int main() {
  float x[128], y[8], a[2];
  roma::act_t xq[128];
  roma::acc_t dot[2][C::PARAMS], xs[2];
  roma::Cycles cyc;
  if (std::fread(x, sizeof(float), 128, stdin) != 128) return 2;
  roma::act_quant<128, 64>(x, xq, a, cyc);
  roma::brom_gemv_tiles<2, 4, 128, 64, 3>(xq, a, planes, scales, mins, y, dot, xs, cyc);
  std::fwrite(y, sizeof(float), 8, stdout);
  return 0;
}
"""


def test_dat_initializers_compile_as_the_synthesis_rom(tmp_path):
    """The synthesis path: ROM arrays initialised from NAME.dat (with __SYNTHESIS__ defined) give golden y."""
    from roma_runtime.compiler import brom
    from roma_runtime.golden import numerics
    from roma_runtime.model.weights import QuantizedMatrix

    rng = np.random.default_rng(3)
    qm = QuantizedMatrix(rng.integers(0, 8, (8, 128), dtype=np.uint8),
                         (rng.standard_normal((8, 2)) * 0.1).astype(np.float16),
                         (rng.standard_normal((8, 2)) * 0.1).astype(np.float16), 3, 64)
    brom.write_image(brom.pack(qm, 2), tmp_path, "w")
    x = rng.standard_normal((1, 128)).astype(np.float32)
    r = hls_tools.compile_synth(tmp_path, SYNTH_TOP, run=True, extra=[f"-I{tmp_path}"], input=x.tobytes(),
                                wextra=False)
    assert r.returncode == 0
    y = np.frombuffer(r.stdout, dtype=np.float32)
    golden = numerics.quantized_matmul(numerics.PreparedMatrix(qm), x)[0]
    np.testing.assert_allclose(y, golden, rtol=0, atol=(128 + 2 + 8) * 2.0**-24 * np.abs(golden).sum())
