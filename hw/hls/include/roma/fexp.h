// ROMA-FPGA fp32 exp: the one exp of the datapath (the sampler's probabilities, the attention softmax, SiLU).
//
// exp_f32 uses fp32 + and * only: t = z * LOG2E, n = floor(t + 0.5) (by truncation toward zero and a
// correction), r = (z - n*LN2_HI) - n*LN2_LO (Cody-Waite: n*LN2_HI is exact for |n| < 2^9), e = the degree-7
// Taylor polynomial of e^r in Horner form, p = e * 2^n with 2^n built in the exponent field. So g++ and
// synthesized IEEE fp cores give the same bits, and golden/sampler.py's exp_f32 reproduces them in numpy;
// hls::exp / std::exp would not (they differ from numpy in the last bit, which changes sampled tokens). Against
// the correctly rounded exp it is within 2e-7 relative (1-2 ulp).
// Range: z < Z_MIN (-86, or -inf, or NaN) gives 0: no subnormal arises, so FTZ and IEEE-subnormal fp cores
// agree, and a term that small is far below the resolution of the sums it joins. z > Z_MAX gives +inf; for
// n = 128 (z in (88.38, Z_MAX]) 2^n is applied as 2 * 2^127.
//
// The emulated board's 16-lane form, exp_f32x16, is in csim/fexp.h. The builds use -ffp-contract=off, so no
// multiply-add is fused.
#ifndef ROMA_FEXP_H
#define ROMA_FEXP_H

#include <cstdint>

#include "types.h"

namespace roma {

namespace fexp_detail {
// fp32 constants as exact decimal literals: each is the exact value of the fp32 whose bits follow (C++14 has no
// hex-float literals; golden/sampler.py spells the same bit patterns)
constexpr float Z_MIN = -86.0f;
constexpr float Z_MAX = 88.72f;                       // exp(88.72) < FLT_MAX < exp(88.7229)
constexpr float LOG2E = 1.44269502162933349609375f;   // 0x3fb8aa3b, 1/ln 2
constexpr float LN2_HI = 0.693145751953125f;          // 0x3f317200, n * LN2_HI exact for |n| < 2^9
constexpr float LN2_LO = 1.428606765330187045037746429443359375e-6f; // 0x35bfbe8e, ln 2 - LN2_HI
constexpr float EXP_C7 = 1.98412701138295233249664306640625e-4f;     // 1/7!  0x39500d01
constexpr float EXP_C6 = 1.388888922519981861114501953125e-3f;       // 1/6!  0x3ab60b61
constexpr float EXP_C5 = 8.333333767950534820556640625e-3f;          // 1/5!  0x3c088889
constexpr float EXP_C4 = 4.16666679084300994873046875e-2f;           // 1/4!  0x3d2aaaab
constexpr float EXP_C3 = 0.16666667163372039794921875f;              // 1/3!  0x3e2aaaab
} // namespace fexp_detail

inline float exp_f32(float z) {
  using namespace fexp_detail;
  const bool ok = z >= Z_MIN; // false for -inf and NaN
  const bool big = z > Z_MAX;
  const float zc = ok && !big ? z : 0.0f;
  const float t = zc * LOG2E;
  const float t2 = t + 0.5f; // in [-123.6, 128.5]
  int n = (int)t2;
  if ((float)n > t2) n -= 1;
  const float nf = (float)n;
  const float r = (zc - nf * LN2_HI) - nf * LN2_LO;
  float e = EXP_C7;
  e = e * r + EXP_C6;
  e = e * r + EXP_C5;
  e = e * r + EXP_C4;
  e = e * r + EXP_C3;
  e = e * r + 0.5f;
  e = e * r + 1.0f;
  e = e * r + 1.0f;
  const bool top = n > 127;
  if (top) e = e * 2.0f;
  const float scale = bits_to_float((uint32_t)(n - (top ? 1 : 0) + 127) << 23);
  return big ? bits_to_float(0x7f800000u) : ok ? e * scale : 0.0f;
}

} // namespace roma

#endif // ROMA_FEXP_H
