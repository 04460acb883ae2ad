// ROMA-FPGA attention, C simulation only: the emulated board's fast query beside the synthesis kernels of
// ../attention.h, never read by Vitis HLS.
//   attention_query_csim    one query with AVX-512 (head_dim 64), bit-identical to attention_query
//   attention_query_fast    attention_query_csim where it is compiled in, else attention_query; the same cycles
//   attention_lanes_csim    attention_lanes with attention_query_fast (the emulated board's layer)
#ifndef ROMA_CSIM_ATTENTION_H
#define ROMA_CSIM_ATTENTION_H
#ifdef __SYNTHESIS__
#error "C simulation only: synthesis reads ../attention.h"
#endif

#include "../attention.h"
#include "fexp.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define ROMA_ATT_CSIM_FAST 1
#else
#define ROMA_ATT_CSIM_FAST 0
#endif

namespace roma {

#if ROMA_ATT_CSIM_FAST
// attention_query_csim: the emulated board's attention_query with AVX-512 (HD = 64).
// The same fp32 operations as ../attention.h's attention_query, on 16 lanes. A head's score is the pairwise
// tree over its HD products (tree_sum<SIMD> of the chunk products, then tree_sum<CHD> of the chunk sums: for
// powers of two, v[i] = v[2i] + v[2i+1] level by level). Here pair_sum (even/odd lane permutes) builds the first two levels
// per position (16 sums of 4 products), and the last four levels for 16 positions at once, so one vector
// ends up holding the scores of 16 consecutive positions. The max is order-free; the exps are exp_f32 on 16
// positions (exp_f32x16, bit for bit; attention_query computes the same values inside its PV loop); the sums l[h]
// and the P*V accumulation keep their per-head, per-element order over s (PV runs kv head by kv head with s inner:
// each of the P partials of acc[h][d] and l[h] sums its positions s = p mod P in order, P = PV_PARTIALS, and the
// partials are added pairwise at the end, as attention_lanes' FINAL);
// the final division is the same IEEE division. fp16 K/V are widened with vcvtph2ps, exact for every non-NaN
// half. tb_brom_tile checks the result bit for bit against attention_query's reference loops.
namespace detail {
inline __m512 pair_sum(__m512 a, __m512 b) { // out[i] = x[2i] + x[2i+1] of the 32 values (a, b)
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
}
inline __m512 load_half16(const half_bits_t *p) {
  return _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256((const __m256i *)p));
}
// Element e of cache row s split over PORTS ports in runs of PL (../attention.h, KV ports): in port (e / PL) % PORTS,
// at run e / (PL * PORTS) of that port's row; with two KV sets, in set s % 2's ports (p0, p1 or p2, p3) at row s / 2.
// A run of PL >= 16 elements holds whole 16-lane vectors.
template <int ROW, int PL, int PORTS, int SETS>
inline const half_bits_t *kv_element(const half_bits_t *p0, const half_bits_t *p1, const half_bits_t *p2,
                                     const half_bits_t *p3, int s, int e) {
  const bool second = (e / PL) % PORTS != 0;
  const half_bits_t *port = s % SETS == 0 ? (second ? p1 : p0) : (second ? p3 : p2);
  return port + (size_t)(s / SETS) * (ROW / PORTS) + (e / (PL * PORTS)) * PL + e % PL;
}
} // namespace detail

template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int PL = HD, int PORTS = 1, int P = 1, int SETS = 1>
void attention_query_csim(const float q[HEADS * HD], int pos, const half_bits_t *k_cache,
                          const half_bits_t *v_cache, float out[HEADS * HD], float (*score)[MAX_CTX],
                          const half_bits_t *k_cache1 = nullptr, const half_bits_t *v_cache1 = nullptr,
                          const half_bits_t *k_cache2 = nullptr, const half_bits_t *v_cache2 = nullptr,
                          const half_bits_t *k_cache3 = nullptr, const half_bits_t *v_cache3 = nullptr) {
  static_assert(HD == 64, "the C-simulation attention is written for head_dim 64");
  static_assert(PORTS == 1 || PL % 16 == 0, "KV ports' runs of whole 16-lane vectors");
  constexpr int GROUP = HEADS / KV_HEADS, ROW = KV_HEADS * HD;
  const __m512 scale = _mm512_set1_ps(attention_scale<HD>());
  const int S = pos + 1;
  const __m512 zero = _mm512_setzero_ps();
  float mx[HEADS], lsum[P][HEADS];
  for (int kh = 0; kh < KV_HEADS; ++kh) {
    __m512 qv[GROUP][4], mxv[GROUP];
    for (int gq = 0; gq < GROUP; ++gq) {
      for (int j = 0; j < 4; ++j) qv[gq][j] = _mm512_loadu_ps(&q[(kh * GROUP + gq) * HD + 16 * j]);
      mxv[gq] = _mm512_set1_ps(-INFINITY);
    }
    for (int s0 = 0; s0 < S; s0 += 16) {
      const int n = S - s0 < 16 ? S - s0 : 16;
      __m512 quads[GROUP][16]; // per position: 16 sums of 4 products (positions past S: 0, never stored)
      for (int u = 0; u < 16; ++u) {
        if (u >= n) {
          for (int gq = 0; gq < GROUP; ++gq) quads[gq][u] = zero;
          continue;
        }
        const int s = s0 + u, e = kh * HD;
        const __m512 k0 = detail::load_half16(
            detail::kv_element<ROW, PL, PORTS, SETS>(k_cache, k_cache1, k_cache2, k_cache3, s, e));
        const __m512 k1 = detail::load_half16(
            detail::kv_element<ROW, PL, PORTS, SETS>(k_cache, k_cache1, k_cache2, k_cache3, s, e + 16));
        const __m512 k2 = detail::load_half16(
            detail::kv_element<ROW, PL, PORTS, SETS>(k_cache, k_cache1, k_cache2, k_cache3, s, e + 32));
        const __m512 k3 = detail::load_half16(
            detail::kv_element<ROW, PL, PORTS, SETS>(k_cache, k_cache1, k_cache2, k_cache3, s, e + 48));
        for (int gq = 0; gq < GROUP; ++gq) {
          const __m512 l0 = detail::pair_sum(_mm512_mul_ps(qv[gq][0], k0), _mm512_mul_ps(qv[gq][1], k1));
          const __m512 l1 = detail::pair_sum(_mm512_mul_ps(qv[gq][2], k2), _mm512_mul_ps(qv[gq][3], k3));
          quads[gq][u] = detail::pair_sum(l0, l1);
        }
      }
      const __mmask16 valid = (__mmask16)(n == 16 ? 0xffffu : (1u << n) - 1u);
      for (int gq = 0; gq < GROUP; ++gq) {
        __m512 *t = quads[gq]; // 16 -> 8 -> 4 -> 2 -> 1 vectors: lane u ends up with position s0 + u
        for (int width = 16; width > 1; width /= 2)
          for (int i = 0; i < width / 2; ++i) t[i] = detail::pair_sum(t[2 * i], t[2 * i + 1]);
        const __m512 sc = _mm512_mul_ps(t[0], scale);
        _mm512_mask_storeu_ps(&score[kh * GROUP + gq][s0], valid, sc);
        mxv[gq] = _mm512_mask_max_ps(mxv[gq], valid, mxv[gq], sc);
      }
    }
    for (int gq = 0; gq < GROUP; ++gq) { // the max of the 16 lanes (order-free)
      float lanes[16];
      _mm512_storeu_ps(lanes, mxv[gq]);
      float m = lanes[0];
      for (int l = 1; l < 16; ++l) m = lanes[l] > m ? lanes[l] : m;
      mx[kh * GROUP + gq] = m;
    }
  }
  for (int h = 0; h < HEADS; ++h) {
    const __m512 m = _mm512_set1_ps(mx[h]);
    for (int s0 = 0; s0 < S; s0 += 16) {
      const __mmask16 valid = (__mmask16)(S - s0 < 16 ? (1u << (S - s0)) - 1u : 0xffffu);
      const __m512 x = _mm512_maskz_loadu_ps(valid, &score[h][s0]);
      _mm512_mask_storeu_ps(&score[h][s0], valid, exp_f32x16(_mm512_sub_ps(x, m)));
    }
  }
  for (int p = 0; p < P; ++p) // a partial no key reached holds 0, as FINAL adds it
    for (int h = 0; h < HEADS; ++h) lsum[p][h] = p < S ? 0.0f + score[h][p] : 0.0f;
  for (int s = P; s < S; ++s)
    for (int h = 0; h < HEADS; ++h) lsum[s % P][h] += score[h][s];
  for (int kh = 0; kh < KV_HEADS; ++kh) {
    // the partials PC at a time (at most two, so that their accumulators stay in registers: four would spill), each
    // pair's sum, the tree's first level, taken as the pair ends: sums[i] = partial 2i + partial 2i + 1
    constexpr int PC = P < 2 ? P : 2;
    __m512 sums[P / PC][GROUP][4];
    for (int p0 = 0; p0 < P; p0 += PC) {
      __m512 acc[PC][GROUP][4];
      for (int q = 0; q < PC; ++q)
        for (int gq = 0; gq < GROUP; ++gq)
          for (int j = 0; j < 4; ++j) acc[q][gq][j] = zero; // 0 + p*v at s = p, as the reference
      for (int s0 = 0; s0 < S; s0 += P)
        for (int q = 0; q < PC && s0 + p0 + q < S; ++q) { // unrolled (PC a constant)
          const int s = s0 + p0 + q;
          __m512 vv[4];
          for (int j = 0; j < 4; ++j)
            vv[j] = detail::load_half16(
                detail::kv_element<ROW, PL, PORTS, SETS>(v_cache, v_cache1, v_cache2, v_cache3, s, kh * HD + 16 * j));
          for (int gq = 0; gq < GROUP; ++gq) {
            const __m512 e = _mm512_set1_ps(score[kh * GROUP + gq][s]);
            for (int j = 0; j < 4; ++j) acc[q][gq][j] = _mm512_add_ps(acc[q][gq][j], _mm512_mul_ps(e, vv[j]));
          }
        }
      for (int gq = 0; gq < GROUP; ++gq)
        for (int j = 0; j < 4; ++j)
          sums[p0 / PC][gq][j] = PC == 2 ? _mm512_add_ps(acc[0][gq][j], acc[PC - 1][gq][j]) : acc[0][gq][j];
    }
    for (int gq = 0; gq < GROUP; ++gq) {
      const int h = kh * GROUP + gq;
      for (int width = P; width > 1; width /= 2) // the partials' pairwise tree (P a power of two)
        for (int i = 0; i < width / 2; ++i) lsum[i][h] = lsum[2 * i][h] + lsum[2 * i + 1][h];
      for (int width = P / PC; width > 1; width /= 2) // ... past its first level for acc
        for (int i = 0; i < width / 2; ++i)
          for (int j = 0; j < 4; ++j) sums[i][gq][j] = _mm512_add_ps(sums[2 * i][gq][j], sums[2 * i + 1][gq][j]);
      const __m512 l = _mm512_set1_ps(lsum[0][h]);
      for (int j = 0; j < 4; ++j) _mm512_storeu_ps(&out[h * HD + 16 * j], _mm512_div_ps(sums[0][gq][j], l));
    }
  }
}
#endif // ROMA_ATT_CSIM_FAST

// One query as attention_query computes and counts it, on the AVX-512 path when it applies.
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr, int PORTS = 1,
          int SETS = 1, int PV_SETS = SETS>
void attention_query_fast(const float q[HEADS * HD], int pos, const half_bits_t *k_cache,
                          const half_bits_t *v_cache, float out[HEADS * HD], LayerCycles &cyc,
                          const half_bits_t *k_cache1 = nullptr, const half_bits_t *v_cache1 = nullptr,
                          const half_bits_t *k_cache2 = nullptr, const half_bits_t *v_cache2 = nullptr,
                          const half_bits_t *k_cache3 = nullptr, const half_bits_t *v_cache3 = nullptr) {
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE, PORTS, SETS, PV_SETS> C;
#if ROMA_ATT_CSIM_FAST
  if constexpr (HD == 64 && (SIMD & (SIMD - 1)) == 0 && (PORTS == 1 || C::PORT_LANES % 16 == 0)) {
    static float score[HEADS][MAX_CTX]; // scores, then exp(score - max), of the current query
    attention_query_csim<HEADS, KV_HEADS, HD, MAX_CTX, C::PORT_LANES, PORTS, C::PV_PARTIALS, SETS>(
        q, pos, k_cache, v_cache, out, score, k_cache1, v_cache1, k_cache2, v_cache2, k_cache3, v_cache3);
    cyc.attention += C::query_cycles(pos + 1);
    return;
  }
#else
  (void)sizeof(C);
#endif
  attention_query<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE, PORTS, SETS, PV_SETS>(
      q, pos, k_cache, v_cache, out, cyc, k_cache1, v_cache1, k_cache2, v_cache2, k_cache3, v_cache3);
}

// attention_lanes (../attention.h: a block of n <= QT queries at positions pos.., one pass over the keys, counted as
// such; a block of one split over two KV sets) with the fast query. Its steps (AttentionSteps) are counted as
// attention_lanes counts them; the queries are computed whole at the finishing call, when every key is in the cache,
// which gives the bits of attention_lanes' passes whatever the calls that scored the keys.
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr, int QT = 1,
          int PORTS = 1, int SETS = 1, int PV_SETS = SETS>
void attention_lanes_csim(const float q[][HEADS * HD], int n, int pos, int keys_from, int keys_to, int steps,
                          const half_bits_t *k_cache, const half_bits_t *v_cache, float out[][HEADS * HD],
                          LayerCycles &cyc, const half_bits_t *k_cache1 = nullptr,
                          const half_bits_t *v_cache1 = nullptr, const half_bits_t *k_cache2 = nullptr,
                          const half_bits_t *v_cache2 = nullptr, const half_bits_t *k_cache3 = nullptr,
                          const half_bits_t *v_cache3 = nullptr) {
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE, PORTS, SETS, PV_SETS> C;
  cyc.attention += C::score_cycles(keys_from, keys_to, n, QT);
  if (!(steps & ATT_FINISH)) return;
  LayerCycles per_query; // the block's passes are counted once, as attention_lanes counts them
  for (int i = 0; i < n; ++i)
    attention_query_fast<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE, PORTS, SETS, PV_SETS>(
        q[i], pos + i, k_cache, v_cache, out[i], per_query, k_cache1, v_cache1, k_cache2, v_cache2, k_cache3,
        v_cache3);
  cyc.attention += C::finish_cycles(pos + n, n, QT);
}

} // namespace roma

#endif // ROMA_CSIM_ATTENTION_H
