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
// exact for non-NaN floats, order-free, a 1-cycle recurrence), one scale + reciprocal per group, quantize
// (elementwise). So the lanes change the cycles, never the values: 2 * cols / SIMD + cols / GROUP + depths.
// At SIMD == GROUP (an Alveo build's 64 lanes at G64) the three are one loop over the groups, a group per
// iteration (ACT_GROUPS: its max, scale, reciprocal and codes; nothing passes between groups, so II=1 with the three
// depths once): cols / GROUP + depths, the same operations on the same values.
// A group at run time (VAR_GROUP; the three-loop form only): one instance quantizes for every group that is a
// power-of-two multiple of GROUP, GROUP the smallest (it sizes the scales): a group's steps are counted by shifts and
// masks of the run-time group's log2, so the ops per group, and the values, are those of an instance of that group.
// roma_core.cpp's quantizers take every group above their lanes this way (a KV260's 16 lanes: G32 and G64 alike).
// The GEMV engines run it at SIMD = their activation lanes (roma_core.cpp Unit::ACT: the build's ROMA_ACT_LANES, at
// most the group; ACT_LANES in types.h is the kernels' default); x and xq must then deliver SIMD elements per cycle,
// which is the caller's to declare (HLS_RULES.md: a partition on an argument holds only where it propagates):
// roma_core.cpp partitions the quantizer's inputs and gemv_unit's xq cyclic by SIMD (or a multiple of it) where
// they are declared.
#ifndef ROMA_ACT_QUANT_H
#define ROMA_ACT_QUANT_H

#include <cmath>
#include <cstdint>

#include "types.h"

namespace roma {

// SIMD inputs per cycle (a power of two dividing GROUP).
template <int COLS, int GROUP, int SIMD = ACT_LANES>
struct ActQuantConfig {
  static_assert(COLS % GROUP == 0, "COLS must be a multiple of GROUP");
  static_assert(GROUP % SIMD == 0, "SIMD must divide GROUP");
  static constexpr int NG = COLS / GROUP;
  static constexpr int STEPS = COLS / SIMD;
  static constexpr int AMAX_DEPTH = 3;                                  // load, compare tree, select
  static constexpr int SCALE_DEPTH = 2 * timing::FDIV_LATENCY + 1;      // amax/127 then 1/scale
  static constexpr int QUANT_DEPTH = 2 + timing::FMUL_LATENCY + 2;      // load, mul, round, clip/store
  // a vector of `cols` inputs (a multiple of GROUP, at most COLS)
  static constexpr bool GROUPS = SIMD == GROUP; // one loop, a group per iteration
  static constexpr uint64_t cycles(int cols, int group = GROUP) {
    return GROUPS ? (uint64_t)(cols / GROUP) * timing::II + AMAX_DEPTH + SCALE_DEPTH + QUANT_DEPTH
                  : (uint64_t)(cols / SIMD) * timing::II + AMAX_DEPTH + (uint64_t)(cols / group) * timing::II +
                        SCALE_DEPTH + (uint64_t)(cols / SIMD) * timing::II + QUANT_DEPTH;
  }
  static constexpr uint64_t CYCLES = cycles(COLS);
};

// One input's code at reciprocal scale iv (fp32 product, round half to even, clip to +-ACT_QMAX); |x|'s bit pattern,
// which orders like |x| for non-NaN floats; a group's scale from its largest |x| and the reciprocal the codes use.
inline act_t act_code(float x, float iv) {
#pragma HLS INLINE
  float r = std::nearbyint(x * iv);
  r = r > (float)ACT_QMAX ? (float)ACT_QMAX : r;
  r = r < -(float)ACT_QMAX ? -(float)ACT_QMAX : r;
  return (act_t)r;
}
inline uint32_t abs_bits(float x) {
#pragma HLS INLINE
  return float_to_bits(x) & 0x7fffffffu;
}
inline float act_scale(uint32_t amax_bits) {
#pragma HLS INLINE
  return bits_to_float(amax_bits) / (float)ACT_QMAX;
}
inline float act_inverse(float scale) {
#pragma HLS INLINE
  return scale > 0.0f ? 1.0f / scale : 0.0f;
}

// log2 of a power of two below 2^16 (a priority encoder: no divider).
inline int log2_pow2(int v) {
#pragma HLS INLINE
  int b = 0;
  for (int k = 1; k < 16; ++k) {
#pragma HLS UNROLL
    if (v == 1 << k) b = k;
  }
  return b;
}

// The first `cols` inputs of x (a multiple of the group, at most COLS: one instance serves vectors of several sizes),
// in groups of GROUP, or of `group` (VAR_GROUP: a power-of-two multiple of GROUP, at run time).
template <int COLS, int GROUP, int SIMD = ACT_LANES, bool VAR_GROUP = false>
void act_quant(int cols, const float x[COLS], act_t xq[COLS], float a_scale[COLS / GROUP], Cycles &cyc,
               int group = GROUP) {
  typedef ActQuantConfig<COLS, GROUP, SIMD> C;
  static_assert(!VAR_GROUP || !C::GROUPS, "a run-time group: the three-loop form (SIMD below the groups)");
  constexpr int STEPS_PER_GROUP = GROUP / SIMD;
  constexpr int MAX_STEPS = C::STEPS, MAX_NG = C::NG; // used by the pragmas
  (void)MAX_STEPS;
  (void)MAX_NG;
#pragma HLS ARRAY_PARTITION variable = x type = cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = xq type = cyclic factor = SIMD dim = 1
  // a group's steps, 1 << shift (powers of two): counted by masks and shifts, not dividers
  const int shift = log2_pow2(VAR_GROUP ? group / SIMD : STEPS_PER_GROUP), last_step = (1 << shift) - 1;
  uint32_t amax_bits[C::NG] = {}; // groups past cols / GROUP are never read (zeroed so no compiler sees otherwise)
  float inv[C::NG] = {};
  const int steps = cols / SIMD, ng = VAR_GROUP ? steps >> shift : cols / GROUP;
  if (C::GROUPS) {
  ACT_GROUPS:
    for (int g = 0; g < ng; ++g) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_NG
      uint32_t m = 0;
      for (int k = 0; k < GROUP; ++k) {
#pragma HLS UNROLL
        const uint32_t a = abs_bits(x[g * GROUP + k]);
        m = a > m ? a : m;
      }
      const float sc = act_scale(m), iv = act_inverse(sc);
      a_scale[g] = sc;
      for (int k = 0; k < GROUP; ++k) {
#pragma HLS UNROLL
        xq[g * GROUP + k] = act_code(x[g * GROUP + k], iv);
      }
    }
    cyc.act_quant += C::cycles(cols);
    return;
  }

AMAX:
  uint32_t run = 0;
  for (int s = 0; s < steps; ++s) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = STEPS_PER_GROUP max = MAX_STEPS
    uint32_t m = 0;
    for (int k = 0; k < SIMD; ++k) {
#pragma HLS UNROLL
      const uint32_t a = abs_bits(x[s * SIMD + k]);
      m = a > m ? a : m;
    }
    run = ((s & last_step) == 0 || m > run) ? m : run;
    if ((s & last_step) == last_step) amax_bits[s >> shift] = run;
  }

SCALE:
  for (int g = 0; g < ng; ++g) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_NG
    const float sc = act_scale(amax_bits[g]);
    a_scale[g] = sc;
    inv[g] = act_inverse(sc);
  }

QUANT:
  for (int s = 0; s < steps; ++s) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = STEPS_PER_GROUP max = MAX_STEPS
    const float iv = inv[s >> shift];
    for (int k = 0; k < SIMD; ++k) {
#pragma HLS UNROLL
      xq[s * SIMD + k] = act_code(x[s * SIMD + k], iv);
    }
  }

  cyc.act_quant += C::cycles(cols, VAR_GROUP ? group : GROUP);
}

} // namespace roma

#endif // ROMA_ACT_QUANT_H
