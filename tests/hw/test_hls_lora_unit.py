"""C simulation of the LoRA unit (hw/hls/include/roma/lora_unit.h) against the runtime's packer and golden model.

Builds hw/hls/tb/tb_lora_unit.cpp with the hw/hls Makefile (g++), writes golden data with
hw/hls/tb/gen_lora_unit.py (lora.pack -> PackedLora, golden deltas from PackedLora.to_golden(), fp16 and int8
with fp16/fp32 row scales, ranks below the slot rank, a tiny shape and SmolLM2's one-layer shape, fp16 units on
every linear and int8 units with memory on some) and requires zero mismatches: loads accepted, corrupt images and
images the unit cannot hold (other storage type, a factor off its targets) refused with the unit's reason and the
slot unchanged, deltas
within the testbench's stated fp32 bound (summation order only). Also checks that a perturbed golden value is
detected and that the header compiles on the synthesis path.
"""

from __future__ import annotations

import shutil

import hls_tools
import numpy as np
import pytest

pytestmark = hls_tools.needs_gxx


@pytest.fixture(scope="module")
def build(hls_build):
    return hls_tools.build_tb(hls_build, "tb_lora_unit", no_warnings=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden_lora_unit")
    lines = hls_tools.load_generator("lora_unit").write_cases(out)
    return out, lines


def test_lora_unit_matches_golden(build, data):
    out, lines = data
    kinds = [l.split()[0] for l in lines]
    assert kinds.count("load") == 7 and kinds.count("reject") == 11 and kinds.count("apply") == 6
    rc, mismatches, compared, text = hls_tools.run_tb(build, "tb_lora_unit", out)
    print(text)
    assert mismatches == 0 and rc == 0, text
    assert compared > 30_000
    assert "smol_i8f" in text and "tiny_bad_magic" in text and "tiny_off_target" in text


def test_testbench_catches_a_wrong_delta(build, data, tmp_path):
    src, _ = data
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    f = bad / "smol_i8h.l0_5.y.f32"  # w_up of an int8/fp16-scale adapter: a real delta there
    y0 = np.fromfile(bad / "smol_i8h.l0_5.y0.f32", "<f4")
    y = np.fromfile(f, "<f4")
    i = int(np.argmax(np.abs(y - y0)))
    y[i] = y0[i] + (y0[i] - y[i])  # the delta's sign flipped on one value
    y.tofile(f)
    rc, mismatches, _, text = hls_tools.run_tb(build, "tb_lora_unit", bad)
    assert mismatches == 1 and rc == 1, text


SYNTH_TOP = r"""
#include "roma/lora_unit.h"
typedef roma::LoraUnit<1, 32, 16, 48, 2, 8, 0x05, true> Lora; // int8, memory for wq and wv
static Lora u;
int top(const unsigned char *img, unsigned bytes, const float x[48], float y[48]) {
  roma::LoraCycles cyc;
  if (roma::lora_validate<Lora>(img, bytes, 1) != roma::LoraImageError::Ok) return 1;
  roma::lora_load<Lora>(u, 0, img, bytes, cyc);
  roma::lora_apply<Lora>(u, 0, 0, 0, x, y, cyc);
  return 0;
}
"""


def test_header_compiles_on_the_synthesis_path(tmp_path):
    hls_tools.compile_synth(tmp_path, SYNTH_TOP, link=False)
