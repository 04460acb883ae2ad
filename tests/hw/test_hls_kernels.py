"""C simulation of the layer kernels (RMSNorm, RoPE, SwiGLU, residual, embedding, attention, fp32->fp16)
against the Python golden model.

Builds hw/hls/tb/tb_kernels.cpp with the hw/hls Makefile (g++), writes golden data with hw/hls/tb/gen_kernels.py
(golden functions and GoldenModel.forward hooked on layer 0) and requires zero mismatches: bit-exact where the
operation is exact (fp16 conversion, residual add, embedding rows, KV-cache rows), within the testbench's stated
bounds elsewhere. Also checks that corrupted golden values are detected and that the headers compile on the
synthesis path (__SYNTHESIS__ defined).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import hls_tools
import numpy as np
import pytest

from roma_runtime.errors import RomaError

pytestmark = hls_tools.needs_gxx


def _gen():
    return hls_tools.load_generator("kernels")


@pytest.fixture(scope="module")
def build(hls_build):
    return hls_tools.build_tb(hls_build, "tb_kernels", no_warnings=True)


def run_tb(build: Path, data: Path) -> tuple[int, int, int, str]:
    return hls_tools.run_tb(build, "tb_kernels", data)


@pytest.fixture(scope="module")
def random_cases(tmp_path_factory):
    data = tmp_path_factory.mktemp("golden_kernels_random")
    lines = _gen().write_cases(data, random=True, model=False)
    return data, lines


def test_random_shapes(build, random_cases):
    data, lines = random_cases
    assert {l.split()[0] for l in lines} == {"f2h", "rmsnorm", "rope", "swiglu", "residual", "embed", "attn"}
    rc, mismatches, compared, out = run_tb(build, data)
    print(out)
    assert mismatches == 0 and rc == 0, out
    assert compared > 500_000  # the fp16 conversion table alone is > 500K values
    assert "rand_attn[simd2,onchip]" in out and "rand_attn[simd4,ddr]" in out and "rand_attn[simd16,ddr]" in out
    # the elementwise units at 16 lanes (RoPE: a head's 8 pairs), bit for bit their default lanes' output
    assert all(f"{case}[simd{lanes}]" in out for case, lanes in
               (("rand_rms64", 16), ("rand_swiglu32", 16), ("rand_res32", 16), ("rand_rope_h2_d16", 8)))


def test_smollm2_layer0(build, tmp_path):
    """Real shapes and data: SmolLM2-135M layer 0 on a real prompt (prefill chunk + 3 greedy decode steps)."""
    try:
        lines = _gen().write_cases(tmp_path, random=False, model=True)
    except RomaError as e:
        pytest.skip(f"SmolLM2-135M is not installed: {e.message}")
    kinds = [l.split()[0] for l in lines]
    assert kinds.count("attn") == 1 and kinds.count("rope") == 2 and "embed" in kinds and "swiglu" in kinds
    attn = next(l for l in lines if l.startswith("attn")).split()
    assert attn[2:6] == ["9", "3", "64", "64"] and int(attn[7]) >= 30  # GQA 9/3, a few dozen positions
    rc, mismatches, compared, out = run_tb(build, tmp_path)
    print(out)
    assert mismatches == 0 and rc == 0, out
    assert compared > 200_000
    # the lanes of a 128-bit (Zynq UltraScale+) and of a 512-bit (U250) KV port
    assert "smollm2_l0_attn[simd8,ddr]" in out and "smollm2_l0_attn[simd32,ddr]" in out


def _corrupt(src: Path, dst: Path, keep: set[str]) -> list[str]:
    shutil.copytree(src, dst)
    lines = [l for l in (dst / "cases.txt").read_text().splitlines() if l.split()[0] in keep]
    (dst / "cases.txt").write_text("\n".join(lines) + "\n")
    return lines


def _edit(path: Path, dtype: str, fn) -> None:
    a = np.fromfile(path, dtype=dtype)
    fn(a)
    a.tofile(path)


def test_testbench_catches_wrong_results(build, random_cases, tmp_path):
    data, _ = random_cases
    bad = tmp_path / "bad"
    _corrupt(data, bad, {"rmsnorm", "rope", "swiglu", "residual", "embed", "attn", "f2h"})

    def flip_largest(a):
        i = int(np.argmax(np.abs(a)))
        a[i] = -a[i]

    def one_ulp(a):
        a.view(np.uint32)[3] += 1

    def one_bit(a):
        a[4] ^= 1

    _edit(bad / "rand_rms64.y.f32", "<f4", flip_largest)          # 2: 4 and 16 lanes (sums of their own order)
    _edit(bad / "rand_rope_h2_d16.y.f32", "<f4", flip_largest)    # 1
    _edit(bad / "rand_swiglu32.y.f32", "<f4", flip_largest)       # 1
    _edit(bad / "rand_res32.y.f32", "<f4", one_ulp)               # 1: the residual add is exact
    _edit(bad / "rand_emb_b3_g64.y.f32", "<f4", one_ulp)          # 1: embedding rows are exact
    _edit(bad / "f2h.out.u16", "<u2", one_bit)                    # 1: fp16 conversion is exact
    _edit(bad / "rand_attn.out.f32", "<f4", flip_largest)         # 3: attention output, on three variants
    _edit(bad / "rand_attn.kc.u16", "<u2", one_bit)               # 3: a KV-cache row, on three variants
    rc, mismatches, _, out = run_tb(build, bad)
    assert mismatches == 13 and rc == 13, out


def test_attention_detects_a_wrong_causal_mask(build, random_cases, tmp_path):
    """Golden outputs of a decode step replaced by those of the next position: the bound must reject them."""
    data, _ = random_cases
    bad = tmp_path / "bad"
    _corrupt(data, bad, {"attn"})
    qw = 4 * 16

    def shift(a):
        a[5 * qw:6 * qw] = a[6 * qw:7 * qw].copy()  # token 5 (decode at position 5) gets token 6's output

    _edit(bad / "rand_attn.out.f32", "<f4", shift)
    rc, mismatches, _, out = run_tb(build, bad)
    assert mismatches >= 2 * 32 and rc != 0, out


SYNTH_TOP = r"""
#include "roma/activation.h"
#include "roma/attention.h"
#include "roma/embedding.h"
#include "roma/norm.h"
#include "roma/rope.h"
static const float w[64] = {1.0f};
static const float invf[8] = {1.0f, 0.5f, 0.25f, 0.125f, 0.0625f, 0.03125f, 0.015625f, 0.0078125f};
static const roma::rom_word_t planes[2][roma::BromTileConfig<4, 64, 32, 4>::PLANE_WORDS] = {{0u}};
static const roma::half_bits_t sc[2][8] = {{0x3c00u}}, mn[2][8] = {{0u}};
void top(const float x[64], int pos, roma::half_bits_t *kc, roma::half_bits_t *vc, float out[64]) {
  roma::LayerCycles cyc;
  float h[64], q[64], k[32], e[64], cs[8], sn[8];
  roma::rms_norm<64>(x, w, 1e-5f, h, cyc);
  roma::rope_angles<16>(pos, invf, cs, sn, cyc);
  roma::rope_qk<4, 2, 16>(cs, sn, h, h, q, k, cyc);
  roma::attention_decode<4, 2, 16, 32, 4>(q, k, h, pos, kc, vc, out, cyc);
  roma::swiglu<64>(out, h, out, cyc);
  roma::residual_add<64>(out, x, out, cyc);
  roma::embedding_row<2, 4, 64, 32, 4>(pos & 7, planes, sc, mn, e, cyc);
  roma::residual_add<64>(out, e, out, cyc);
  // the elementwise units at the Alveo boards' lanes
  roma::rms_norm<64, 16>(out, w, 1e-5f, h, cyc);
  roma::rope_qk<4, 2, 16, 8>(cs, sn, h, h, q, k, cyc);
  roma::swiglu<64, 16>(out, h, out, cyc);
  roma::residual_add<64, 16>(out, q, out, cyc);
}
"""


def test_headers_compile_on_the_synthesis_path(tmp_path):
    hls_tools.compile_synth(tmp_path, SYNTH_TOP, link=False)
