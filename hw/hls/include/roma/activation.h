// ROMA-FPGA elementwise layer kernels, fp32: SwiGLU and the residual add.
//
//   swiglu:       y = (g / (1 + exp(-g))) * u     the golden silu(gate) * up, same operation order; only the
//                                                 exp differs (exp_f32, fexp.h, vs numpy's: 1 ulp)
//   residual_add: y = x + d                       one fp32 add: bit-exact with the golden x + linear(...)
// One pipelined loop each, II=1, SIMD elements per cycle: N/SIMD iterations + depth.
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
#if !defined(__SYNTHESIS__) && defined(__AVX512F__)
  if constexpr (N % 16 == 0) { // C simulation: the same operations on 16 lanes (exp_f32x16 is exp_f32 per lane)
    const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
    for (int i = 0; i < N; i += 16) {
      const __m512 g = _mm512_loadu_ps(&gate[i]);
      const __m512 e = exp_f32x16(_mm512_xor_ps(g, sign));
      _mm512_storeu_ps(&y[i], _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(&up[i])));
    }
    cyc.activation += C::CYCLES;
    return;
  }
#endif
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
#ifndef __SYNTHESIS__
  cyc.activation += C::CYCLES;
#else
  (void)cyc;
#endif
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
#ifndef __SYNTHESIS__
  cyc.residual += C::CYCLES;
#else
  (void)cyc;
#endif
}

} // namespace roma

#endif // ROMA_ACTIVATION_H
