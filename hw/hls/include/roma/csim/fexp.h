// ROMA-FPGA fp32 exp, C simulation only: exp_f32 of ../fexp.h on 16 lanes (AVX-512), bit for bit (tb_brom_tile
// checks it on a sweep); the emulated board's softmax and SiLU use it. Never read by Vitis HLS. The builds use
// -ffp-contract=off, so no multiply-add is fused in either.
#ifndef ROMA_CSIM_FEXP_H
#define ROMA_CSIM_FEXP_H
#ifdef __SYNTHESIS__
#error "C simulation only: synthesis reads ../fexp.h"
#endif

#include "../fexp.h"

#if defined(__AVX512F__)
#include <immintrin.h>

namespace roma {

inline __m512 exp_f32x16(__m512 z) {
  using namespace fexp_detail;
  const __mmask16 ok = _mm512_cmp_ps_mask(z, _mm512_set1_ps(Z_MIN), _CMP_GE_OQ);
  const __mmask16 big = _mm512_cmp_ps_mask(z, _mm512_set1_ps(Z_MAX), _CMP_GT_OQ);
  const __m512 zc = _mm512_maskz_mov_ps(ok & ~big, z);
  const __m512 t2 = _mm512_add_ps(_mm512_mul_ps(zc, _mm512_set1_ps(LOG2E)), _mm512_set1_ps(0.5f));
  const __m512 nf = _mm512_maskz_roundscale_ps(0xffff, t2, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); // floor
  const __m512 r = _mm512_sub_ps(_mm512_sub_ps(zc, _mm512_mul_ps(nf, _mm512_set1_ps(LN2_HI))),
                                 _mm512_mul_ps(nf, _mm512_set1_ps(LN2_LO)));
  __m512 e = _mm512_set1_ps(EXP_C7);
  e = _mm512_add_ps(_mm512_mul_ps(e, r), _mm512_set1_ps(EXP_C6));
  e = _mm512_add_ps(_mm512_mul_ps(e, r), _mm512_set1_ps(EXP_C5));
  e = _mm512_add_ps(_mm512_mul_ps(e, r), _mm512_set1_ps(EXP_C4));
  e = _mm512_add_ps(_mm512_mul_ps(e, r), _mm512_set1_ps(EXP_C3));
  e = _mm512_add_ps(_mm512_mul_ps(e, r), _mm512_set1_ps(0.5f));
  e = _mm512_add_ps(_mm512_mul_ps(e, r), _mm512_set1_ps(1.0f));
  e = _mm512_add_ps(_mm512_mul_ps(e, r), _mm512_set1_ps(1.0f));
  const __m512i n = _mm512_maskz_cvtps_epi32(0xffff, nf); // (maskz forms: no gcc 12 -Wuninitialized noise)
  const __mmask16 top = _mm512_cmpgt_epi32_mask(n, _mm512_set1_epi32(127));
  e = _mm512_mask_mul_ps(e, top, e, _mm512_set1_ps(2.0f));
  const __m512i ex = _mm512_sub_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), _mm512_maskz_set1_epi32(top, 1));
  const __m512 p = _mm512_maskz_mul_ps(ok, e, _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, ex, 23)));
  return _mm512_mask_blend_ps(big, p, _mm512_castsi512_ps(_mm512_set1_epi32(0x7f800000)));
}

} // namespace roma

#endif // __AVX512F__
#endif // ROMA_CSIM_FEXP_H
