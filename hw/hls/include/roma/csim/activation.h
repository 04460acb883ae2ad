// ROMA-FPGA elementwise layer kernels, C simulation only: the emulated board's SwiGLU (../activation.h's
// swiglu on 16 lanes with exp_f32x16: the same operations, bit for bit; tb_brom_tile checks it). Never read
// by Vitis HLS.
#ifndef ROMA_CSIM_ACTIVATION_H
#define ROMA_CSIM_ACTIVATION_H
#ifdef __SYNTHESIS__
#error "C simulation only: synthesis reads ../activation.h"
#endif

#include "../activation.h"
#include "fexp.h"

namespace roma {

// swiglu, with AVX-512 when N is a multiple of 16 (else the synthesis loop itself).
template <int N, int SIMD = 4>
void swiglu_csim(const float gate[N], const float up[N], float y[N], LayerCycles &cyc) {
#if defined(__AVX512F__)
  if constexpr (N % 16 == 0) {
    const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f);
    for (int i = 0; i < N; i += 16) {
      const __m512 g = _mm512_loadu_ps(&gate[i]);
      const __m512 e = exp_f32x16(_mm512_xor_ps(g, sign));
      _mm512_storeu_ps(&y[i], _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, e)), _mm512_loadu_ps(&up[i])));
    }
    cyc.activation += SwigluConfig<N, SIMD>::CYCLES;
    return;
  }
#endif
  swiglu<N, SIMD>(gate, up, y, cyc);
}

} // namespace roma

#endif // ROMA_CSIM_ACTIVATION_H
