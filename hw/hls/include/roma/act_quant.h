// ROMA-FPGA activation quantizer: the numerics contract's per-group symmetric int8 quantization.
//
// For each group of G inputs (fp32 throughout, round half to even, no FMA contraction):
//   amax = max_j |x_j|;  scale = amax / 127;  inv = scale > 0 ? 1 / scale : 0;
//   x_q  = clip(nearbyint(x_j * inv), -127, 127)
// Bit-exact with roma_runtime.golden.numerics.quantize_activations for finite inputs (compile with
// -ffp-contract=off; the default rounding mode is round-to-nearest-even). Out of contract: NaN inputs and
// groups whose amax is so small (below ~3.7e-37) that 1/scale overflows to inf (numpy is undefined there).
//
// Three pipelined loops, II=1, SIMD inputs per cycle: |x| max (integer compare of the |x| bit patterns:
// exact for non-NaN floats, a 1-cycle recurrence), one scale + reciprocal per group, quantize.
#ifndef ROMA_ACT_QUANT_H
#define ROMA_ACT_QUANT_H

#include <cmath>
#include <cstdint>

#include "types.h"

namespace roma {

// SIMD inputs per cycle (a power of two dividing GROUP): 4 keeps pace with the tiles' candidate stage.
template <int COLS, int GROUP, int SIMD = 4>
struct ActQuantConfig {
  static_assert(COLS % GROUP == 0, "COLS must be a multiple of GROUP");
  static_assert(GROUP % SIMD == 0, "SIMD must divide GROUP");
  static constexpr int NG = COLS / GROUP;
  static constexpr int STEPS = COLS / SIMD;
  static constexpr int AMAX_DEPTH = 3;                                  // load, compare tree, select
  static constexpr int SCALE_DEPTH = 2 * timing::FDIV_LATENCY + 1;      // amax/127 then 1/scale
  static constexpr int QUANT_DEPTH = 2 + timing::FMUL_LATENCY + 2;      // load, mul, round, clip/store
  static constexpr uint64_t CYCLES = (uint64_t)STEPS * timing::II + AMAX_DEPTH +
                                     (uint64_t)NG * timing::II + SCALE_DEPTH +
                                     (uint64_t)STEPS * timing::II + QUANT_DEPTH;
};

template <int COLS, int GROUP, int SIMD = 4>
void act_quant(const float x[COLS], act_t xq[COLS], float a_scale[COLS / GROUP], Cycles &cyc) {
  typedef ActQuantConfig<COLS, GROUP, SIMD> C;
  constexpr int STEPS_PER_GROUP = GROUP / SIMD;
#pragma HLS ARRAY_PARTITION variable = x type = cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = xq type = cyclic factor = SIMD dim = 1
  uint32_t amax_bits[C::NG];
  float inv[C::NG];

AMAX:
  uint32_t run = 0;
  for (int s = 0; s < C::STEPS; ++s) {
#pragma HLS PIPELINE II = timing::II
    uint32_t m = 0;
    for (int k = 0; k < SIMD; ++k) {
#pragma HLS UNROLL
      const uint32_t a = float_to_bits(x[s * SIMD + k]) & 0x7fffffffu; // |x| bits order like |x| (non-NaN)
      m = a > m ? a : m;
    }
    run = (s % STEPS_PER_GROUP == 0 || m > run) ? m : run; // powers of two: masks, not dividers
    if (s % STEPS_PER_GROUP == STEPS_PER_GROUP - 1) amax_bits[s / STEPS_PER_GROUP] = run;
  }

SCALE:
  for (int g = 0; g < C::NG; ++g) {
#pragma HLS PIPELINE II = timing::II
    const float sc = bits_to_float(amax_bits[g]) / (float)ACT_QMAX;
    a_scale[g] = sc;
    inv[g] = sc > 0.0f ? 1.0f / sc : 0.0f;
  }

QUANT:
  for (int s = 0; s < C::STEPS; ++s) {
#pragma HLS PIPELINE II = timing::II
    const float iv = inv[s / STEPS_PER_GROUP];
    for (int k = 0; k < SIMD; ++k) {
#pragma HLS UNROLL
      float r = std::nearbyint(x[s * SIMD + k] * iv); // fp32 product, round half to even
      r = r > (float)ACT_QMAX ? (float)ACT_QMAX : r;
      r = r < -(float)ACT_QMAX ? -(float)ACT_QMAX : r;
      xq[s * SIMD + k] = (act_t)r;
    }
  }

  cyc.act_quant += C::CYCLES;
}

} // namespace roma

#endif // ROMA_ACT_QUANT_H
