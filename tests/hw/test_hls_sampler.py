"""C simulation of the on-chip sampler (hw/hls/include/roma/sampler.h) against the golden on-chip sampler.

`make run-tb_sampler` builds hw/hls/tb/tb_sampler.cpp with g++, writes golden data with hw/hls/tb/gen_sampler.py
(roma_runtime.golden.sampler) and runs it: every token and every PRNG state, over single calls and autonomous
decode sequences at vocabularies 49152, 1000, 257 and 24, must be identical (0 mismatches).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import hls_tools
import numpy as np
import pytest

pytestmark = hls_tools.needs_gxx

SUMMARY = re.compile(r"tb_sampler: (\d+) mismatches of (\d+) \((\d+) cases\)")


@pytest.fixture(scope="module")
def csim(hls_build):
    r = hls_tools.make(hls_build, "run-tb_sampler", timeout=300)
    return hls_build, r


def run_tb(build: Path, data: Path) -> tuple[int, int, int, str]:
    return hls_tools.run_tb(build, "tb_sampler", data)


def test_sampler_bit_exact_with_golden(csim):
    build, r = csim
    out = r.stdout + r.stderr
    print(out)
    assert r.returncode == 0, out
    m = SUMMARY.search(r.stdout)
    assert m and int(m.group(1)) == 0, out
    assert int(m.group(3)) >= 400 and int(m.group(2)) > 25_000 + 6_000 + 1_500  # exp table, PRNG, tokens
    assert "exp_f32: 0 mismatches" in out and "prng (xorshift64*): 0 mismatches" in out
    # every case twice: its greedy tokens by the lists, then by ARGMAX at four times the lanes (V=257: the last
    # row's lanes past V)
    for shape in ("V=49152 K=64 LANES=4 N=64", "V=1000 K=16 LANES=1 N=8", "V=24 K=64 LANES=2 N=4",
                  "V=257 K=64 LANES=1 N=64"):
        for argmax in ("", f" ARGMAX={4 * int(shape.split('LANES=')[1].split()[0])}"):
            line = next((l for l in out.splitlines() if shape + argmax + " " in l), "")
            assert "mismatches 0" in line and " 0 cases" not in line, out
    # the cycle model of the SmolLM2-sized instance: STREAM dominates (V / LANES = 12288 iterations); ARGMAX takes 16
    # logits a cycle (3072 iterations), sampling is unchanged
    big = re.search(r"V=49152 K=64 LANES=4 N=64 .*greedy (\d+) sampled (\d+)", out)
    assert big and 12288 < int(big.group(1)) < int(big.group(2)) < 14000
    fast = re.search(r"V=49152 K=64 LANES=4 N=64 ARGMAX=16 .*greedy (\d+) sampled (\d+)", out)
    assert fast and 3072 < int(fast.group(1)) < 3200 and int(fast.group(2)) == int(big.group(2))


def test_testbench_detects_a_perturbed_golden_token(csim, tmp_path):
    build, r = csim
    assert r.returncode == 0, r.stdout + r.stderr
    data = build / "golden_tb_sampler"
    lines = (data / "cases.txt").read_text().split("\n")
    seq = next(l for l in lines if "v1000_seq0" in l)  # an autonomous sequence: state carried
    name = seq.split()[0]
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in data.glob(f"{name}.*"):
        shutil.copy(f, bad / f.name)
    (bad / "cases.txt").write_text(seq + "\n")
    tokens = np.fromfile(bad / f"{name}.tokens.u32", dtype="<u4")
    rc, mismatches, compared, out = run_tb(build, bad)
    assert (rc, mismatches, compared) == (0, 0, 2 * tokens.size), out  # the case runs twice (lists, then ARGMAX)
    tokens[17] = (tokens[17] + 1) % 1000
    tokens.tofile(bad / f"{name}.tokens.u32")
    rc, mismatches, _, out = run_tb(build, bad)
    assert (rc, mismatches) == (2, 2), out  # exactly the perturbed token, in each run; the kernel carries its state
    assert f"{name} step 17" in out
    states = np.fromfile(bad / f"{name}.states.u64", dtype="<u8")
    states[3] ^= np.uint64(1)
    states.tofile(bad / f"{name}.states.u64")
    rc, mismatches, _, out = run_tb(build, bad)
    assert (rc, mismatches) == (4, 4), out


SYNTH_TOP = r"""
#include <cstdio>
#include "roma/sampler.h"
// The synthesis path: __SYNTHESIS__ defined (no cycle counters), no <cmath>, sampler.h alone.
int main() {
  static float logits[4096];
  for (int i = 0; i < 4096; ++i) logits[i] = (float)((i * 37) % 101) * 0.125f;
  roma::SamplerParams prm;
  prm.greedy = 0;
  prm.inv_temperature = 1.25f;
  prm.top_p = 0.9f;
  roma::RecentIds<16> recent;
  roma::SamplerCycles cyc;
  uint64_t state = 42;
  unsigned sum = 0;
  for (int t = 0; t < 8; ++t) sum += roma::sampler_step<4096, 32, 8, 16>(logits, prm, state, recent, cyc);
  std::printf("%u %llu\n", sum, (unsigned long long)state);
  return 0;
}
"""


def test_header_compiles_for_synthesis(tmp_path):
    r = hls_tools.compile_synth(tmp_path, SYNTH_TOP, run=True)
    assert r.returncode == 0, r.stderr
    from roma_runtime.golden import sampler as gs

    logits = (((np.arange(4096) * 37) % 101).astype(np.float32) * np.float32(0.125)).astype(np.float32)
    dec = gs.OnChipSampler(gs.OnChipSamplerSpec(4096, 32, 16, lanes=8),
                           gs.OnChipParams(greedy=0, inv_temperature=np.float32(1.25), top_p=np.float32(0.9)),
                           state=42)
    total = sum(dec.sample(logits) for _ in range(8))
    assert r.stdout.split() == [str(total), str(dec.state)]
