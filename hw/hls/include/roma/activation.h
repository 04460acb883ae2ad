// ROMA-FPGA elementwise layer kernels, fp32: SwiGLU and the residual add.
//
//   swiglu:       y = (g / (1 + exp(-g))) * u     the golden silu(gate) * up, same operation order; only the
//                                                 exp differs (exp_f32, fexp.h, vs numpy's: 1 ulp)
//   residual_add: y = x + d                       one fp32 add: bit-exact with the golden x + linear(...)
// One pipelined loop each, II=1, SIMD elements per cycle: N/SIMD iterations + depth. The emulated board's
// SwiGLU (AVX-512, bit-identical) is in csim/activation.h.
#ifndef ROMA_ACTIVATION_H
#define ROMA_ACTIVATION_H

#include <cmath>
#include <cstdint>

#include "fexp.h"
#include "layer_cycles.h"
#include "types.h"

namespace roma {

template <int N, int SIMD = 4>
struct SwigluConfig {
  static_assert(N % SIMD == 0, "SIMD must divide N");
  static constexpr int STEPS = N / SIMD;
  // load, negate, exp, +1, divide, * up, store
  static constexpr int DEPTH = 2 + timing::FEXP_LATENCY + timing::FADD_LATENCY + timing::FDIV_LATENCY +
                               timing::FMUL_LATENCY + 1;
  static constexpr uint64_t CYCLES = (uint64_t)STEPS * timing::II + DEPTH;
};

template <int N, int SIMD = 4>
struct ResidualConfig {
  static_assert(N % SIMD == 0, "SIMD must divide N");
  static constexpr int STEPS = N / SIMD;
  static constexpr int DEPTH = 2 + timing::FADD_LATENCY + 1;
  static constexpr uint64_t CYCLES = (uint64_t)STEPS * timing::II + DEPTH;
};

// y = silu(gate) * up. y may alias gate or up (elementwise).
template <int N, int SIMD = 4>
void swiglu(const float gate[N], const float up[N], float y[N], LayerCycles &cyc) {
  typedef SwigluConfig<N, SIMD> C;
#pragma HLS ARRAY_PARTITION variable = gate type = cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = up type = cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = y type = cyclic factor = SIMD dim = 1
SWIGLU:
  for (int s = 0; s < C::STEPS; ++s) {
#pragma HLS PIPELINE II = timing::II
    for (int k = 0; k < SIMD; ++k) {
#pragma HLS UNROLL
      const int i = s * SIMD + k;
      const float g = gate[i];
      y[i] = (g / (1.0f + exp_f32(-g))) * up[i];
    }
  }
  cyc.activation += C::CYCLES;
}

// y = x + d. y may alias x (the residual stream updated in place).
template <int N, int SIMD = 4>
void residual_add(const float x[N], const float d[N], float y[N], LayerCycles &cyc) {
  typedef ResidualConfig<N, SIMD> C;
#pragma HLS ARRAY_PARTITION variable = x type = cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = d type = cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = y type = cyclic factor = SIMD dim = 1
RESIDUAL:
  for (int s = 0; s < C::STEPS; ++s) {
#pragma HLS PIPELINE II = timing::II
    for (int k = 0; k < SIMD; ++k) {
#pragma HLS UNROLL
      const int i = s * SIMD + k;
      y[i] = x[i] + d[i];
    }
  }
  cyc.residual += C::CYCLES;
}

} // namespace roma

#endif // ROMA_ACTIVATION_H
