// ROMA-FPGA attention over a KV cache: grouped-query heads, causal, fp16 KV, fp32 arithmetic.
//
// Semantics (roma_runtime.golden.model.GoldenModel.forward, one layer):
//   the new tokens' K (after RoPE) and V are rounded to fp16 (round to nearest even, float_to_half: bit-exact
//   with numpy's astype(float16)) and written to cache rows start..start+T-1; then for the query at position
//   p, with kv head kh = h / GROUP (GROUP = HEADS / KV_HEADS) and keys s = 0..p (causal):
//     score[h,s] = (sum_d q[h,d] * k[s,kh,d]) * scale,   scale = fp32(1/sqrt(HD))
//     e[h,s] = exp(score[h,s] - max_s score[h,s]),  l[h] = sum_s e[h,s]
//     out[h,d] = (sum_s e[h,s] * v[s,kh,d]) / l[h]
//   The golden divides the probabilities first (p = e/l, then p @ V); dividing the HD outputs once instead of
//   every probability is cheaper and only changes rounding (covered by the testbench bound).
//
// Cache layout (one layer, the golden's [position, kv_head, head_dim]): ROW = KV_HEADS*HD fp16 bit patterns
// (uint16) per position, row p at k_cache[p*ROW]. PLACE selects where the cache that attention reads lives:
//   KvPlace::Ddr    (default) DDR buffers the host allocates (KV manager), reached through m_axi pointer
//                   arguments of the top; each pass reads the rows 0..p as ONE sequential burst (S*ROW*2 bytes).
//   KvPlace::OnChip short contexts: the top owns `half_bits_t kv[LAYERS][2][CTX*ROW]` (URAM/BRAM, ARRAY_RESHAPE
//                   cyclic factor=SIMD: one SIMD-wide word per cycle) and passes the layer's slices; attention
//                   reads only them (RAM latency, no burst). The host's DDR rows stay the source of truth: kv_write
//                   writes each new row to both (write-through, the same loop: k_ddr/v_ddr), and kv_load copies
//                   rows of the DDR buffer into the on-chip ones (the top's CMD_KV_LOAD) when the host switches
//                   buffers or changed their rows. tb_kernels checks both places against the golden.
// The compute is the same code; PLACE changes the memory latency in the cycle model (and the top's pragmas).
//
// Softmax: two passes over the cache (not online/streaming): pass 1 streams K and writes all scores of the
// query to an on-chip buffer score[HEADS][MAX_CTX] with a running max; then one exp per (s, h) with the sum;
// pass 2 streams V. Why: the online form rescales the HD accumulators by exp(m_old - m_new) at every new
// max, a loop-carried chain (compare, sub, exp, mul, add ~ 30 cycles) that would bound the II per position,
// and it adds rescale roundings; two passes read K once and V once (the same DDR traffic), keep every loop at
// II=1 and follow the golden's order. Cost: the score buffer (HEADS*MAX_CTX fp32: 9*8192*4 = 288 KB for
// SmolLM2 at full context; 36 KB at 1K). GQA: the GROUP query heads of a kv head are processed together, so
// each K/V element fetched is used GROUP times (the cache is read once per query, not once per head).
//
// Loops (SIMD fp16 elements of a row per cycle, i.e. SIMD*16 bits of the m_axi port):
//   WRITE: CH = ROW/SIMD iterations per new token (convert + store; OnChip: both places)   II=1
//   LOAD:  n*CH iterations per layer and K/V (kv_load, OnChip: DDR rows -> on chip)         II=1
//   QLOAD: HEADS*HD/SIMD (query to partitioned registers)                                  II=1
//   SCORE: S*CH iterations: SIMD fp16 of a K row, GROUP*SIMD products, lane adder tree;
//          the HD/SIMD chunk sums of a head are kept in registers and added by a tree at the head's
//          last chunk (no fp32 loop-carried accumulation); running max per head               II=1
//   EXP:   S*HEADS iterations, one exp per cycle; l[h] revisited every HEADS iterations    II=acc_ii(HEADS)
//   PV:    S*CH iterations, GROUP*SIMD MACs; acc[h][d] revisited every CH iterations       II=acc_ii(CH)
//   FINAL: HEADS*HD/SIMD iterations, SIMD dividers                                         II=1
// A prefill chunk of T tokens writes T rows, then runs the query loops T times (keys 0..start+i).
#ifndef ROMA_ATTENTION_H
#define ROMA_ATTENTION_H

#include <cmath>
#include <cstdint>
#if !defined(__SYNTHESIS__) && defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "fexp.h"
#include "layer_cycles.h"
#include "types.h"

namespace roma {

enum class KvPlace : int { Ddr = 0, OnChip = 1 };

// fp32(1/sqrt(n)) rounded like numpy's np.float32(1.0 / np.sqrt(n)) (double sqrt and divide, then fp32);
// constexpr so synthesis sees a constant. Newton in double converges to within an ulp of double, far below
// fp32 resolution (the testbench checks the value against the golden model's).
constexpr double constexpr_sqrt_newton(double x, double cur, int it) {
  return it == 0 ? cur : constexpr_sqrt_newton(x, 0.5 * (cur + x / cur), it - 1);
}
template <int HD>
constexpr float attention_scale() {
  return (float)(1.0 / constexpr_sqrt_newton((double)HD, (double)HD, 60));
}

template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr>
struct AttentionConfig {
  static_assert(HEADS % KV_HEADS == 0, "HEADS must be a multiple of KV_HEADS");
  static_assert(HD % SIMD == 0, "SIMD must divide head_dim");
  static constexpr int GROUP = HEADS / KV_HEADS;
  static constexpr int ROW = KV_HEADS * HD; // fp16 elements per cache row (one position)
  static constexpr int CHD = HD / SIMD;     // chunks per head
  static constexpr int CH = ROW / SIMD;     // chunks per cache row
  static constexpr int MEM_READ_LATENCY =
      PLACE == KvPlace::Ddr ? timing::AXI_READ_LATENCY : timing::RAM_LATENCY;
  // OnChip writes through to DDR in the same loop, so a row write ends with the DDR write response either way
  static constexpr int MEM_WRITE_LATENCY = timing::AXI_WRITE_LATENCY;
  static constexpr int SCORE_II = timing::II;
  static constexpr int EXP_II = timing::acc_ii(HEADS);
  static constexpr int PV_II = timing::acc_ii(CH);
  static constexpr int WRITE_DEPTH = 2 + 1 /* fp16 rounding */ + MEM_WRITE_LATENCY;
  static constexpr int QLOAD_DEPTH = 2;
  static constexpr int SCORE_DEPTH = MEM_READ_LATENCY + 1 /* fp16 decode */ + timing::FMUL_LATENCY +
                                     timing::ceil_log2(SIMD) * timing::FADD_LATENCY +
                                     timing::ceil_log2(CHD) * timing::FADD_LATENCY + timing::FMUL_LATENCY +
                                     timing::FCMP_LATENCY + 1;
  static constexpr int EXP_DEPTH = 2 + timing::FADD_LATENCY + timing::FEXP_LATENCY + timing::FADD_LATENCY + 1;
  static constexpr int PV_DEPTH =
      MEM_READ_LATENCY + 1 + timing::FMUL_LATENCY + timing::FADD_LATENCY + 1;
  static constexpr int FINAL_DEPTH = 2 + timing::FDIV_LATENCY + 1;
  static constexpr int LOAD_DEPTH = timing::AXI_READ_LATENCY + 1 /* RAM write */;
  static constexpr uint64_t WRITE_CYCLES = (uint64_t)CH * timing::II + WRITE_DEPTH; // per new token
  // kv_load of n rows of one cache (K or V of a layer): n*ROW*2 bytes at SIMD*2 bytes per cycle, one burst.
  static constexpr uint64_t load_cycles(int n) { return (uint64_t)n * CH * timing::II + LOAD_DEPTH; }
  // One query over S keys.
  static constexpr uint64_t query_cycles(int S) {
    return (uint64_t)(HEADS * CHD) * timing::II + QLOAD_DEPTH + (uint64_t)S * CH * SCORE_II + SCORE_DEPTH +
           (uint64_t)S * HEADS * EXP_II + EXP_DEPTH + (uint64_t)S * CH * PV_II + PV_DEPTH +
           (uint64_t)(HEADS * CHD) * timing::II + FINAL_DEPTH;
  }
};

namespace detail {
// Balanced pairwise tree over N values (unrolled adder tree), in place.
template <int N>
inline float tree_sum(float v[N]) {
#pragma HLS INLINE
  for (int width = N; width > 1; width = (width + 1) / 2) {
#pragma HLS UNROLL
    for (int i = 0; i < width / 2; ++i) {
#pragma HLS UNROLL
      v[i] = v[2 * i] + v[2 * i + 1];
    }
    if (width % 2) v[width / 2] = v[width - 1];
  }
  return v[0];
}
} // namespace detail

// Write one token's K and V (fp32, K already rotated) into cache row `pos` as fp16; OnChip: also into the
// host's DDR rows k_ddr/v_ddr (write-through; unused for Ddr).
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr>
void kv_write(const float k_new[KV_HEADS * HD], const float v_new[KV_HEADS * HD], int pos,
              half_bits_t *k_cache, half_bits_t *v_cache, LayerCycles &cyc, half_bits_t *k_ddr = nullptr,
              half_bits_t *v_ddr = nullptr) {
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE> C;
KV_WRITE:
  for (int c = 0; c < C::CH; ++c) {
#pragma HLS PIPELINE II = timing::II
    for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
      const size_t i = (size_t)pos * C::ROW + c * SIMD + l;
      const half_bits_t kh = float_to_half(k_new[c * SIMD + l]), vh = float_to_half(v_new[c * SIMD + l]);
      k_cache[i] = kh;
      v_cache[i] = vh;
      if constexpr (PLACE == KvPlace::OnChip) {
        k_ddr[i] = kh;
        v_ddr[i] = vh;
      }
    }
  }
#ifndef __SYNTHESIS__
  cyc.attention += C::WRITE_CYCLES;
#else
  (void)cyc;
#endif
}

#if !defined(__SYNTHESIS__) && defined(__AVX512F__)
// ---- C simulation only: the emulated board's attention_query with AVX-512 (HD = 64) ----
// The same fp32 operations as attention_query below, on 16 lanes. A head's score is the pairwise tree over its
// HD products (tree_sum<SIMD> of the chunk products, then tree_sum<CHD> of the chunk sums: for powers of two,
// v[i] = v[2i] + v[2i+1] level by level). Here pair_sum (even/odd lane permutes) builds the first two levels
// per position (16 sums of 4 products), and the last four levels for 16 positions at once, so one vector
// ends up holding the scores of 16 consecutive positions. The max is order-free; the exps are exp_f32 on 16
// positions (exp_f32x16, bit for bit); the sums l[h] and the P*V accumulation keep their per-head, per-element
// order over s (PV runs kv head by kv head with s inner: each acc[h][d] still sums s = 0, 1, ... in order);
// the final division is the same IEEE division. fp16 K/V are widened with vcvtph2ps, exact for every non-NaN
// half. tb_brom_tile checks the result bit for bit against attention_query's reference loops.
#define ROMA_ATT_CSIM_FAST 1
namespace detail {
inline __m512 pair_sum(__m512 a, __m512 b) { // out[i] = x[2i] + x[2i+1] of the 32 values (a, b)
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  return _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
}
inline __m512 load_half16(const half_bits_t *p) {
  return _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256((const __m256i *)p));
}
} // namespace detail

template <int HEADS, int KV_HEADS, int HD, int MAX_CTX>
void attention_query_csim(const float q[HEADS * HD], int pos, const half_bits_t *k_cache,
                          const half_bits_t *v_cache, float out[HEADS * HD], float (*score)[MAX_CTX]) {
  static_assert(HD == 64, "the C-simulation attention is written for head_dim 64");
  constexpr int GROUP = HEADS / KV_HEADS, ROW = KV_HEADS * HD;
  const __m512 scale = _mm512_set1_ps(attention_scale<HD>());
  const int S = pos + 1;
  const __m512 zero = _mm512_setzero_ps();
  float mx[HEADS], lsum[HEADS];
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
        const half_bits_t *kr = &k_cache[(size_t)(s0 + u) * ROW + kh * HD];
        const __m512 k0 = detail::load_half16(kr), k1 = detail::load_half16(kr + 16);
        const __m512 k2 = detail::load_half16(kr + 32), k3 = detail::load_half16(kr + 48);
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
  for (int h = 0; h < HEADS; ++h) lsum[h] = 0.0f + score[h][0];
  for (int s = 1; s < S; ++s)
    for (int h = 0; h < HEADS; ++h) lsum[h] += score[h][s];
  for (int kh = 0; kh < KV_HEADS; ++kh) {
    __m512 acc[GROUP][4];
    for (int gq = 0; gq < GROUP; ++gq)
      for (int j = 0; j < 4; ++j) acc[gq][j] = zero; // 0 + p*v at s = 0, as the reference
    for (int s = 0; s < S; ++s) {
      const half_bits_t *vr = &v_cache[(size_t)s * ROW + kh * HD];
      __m512 vv[4];
      for (int j = 0; j < 4; ++j) vv[j] = detail::load_half16(vr + 16 * j);
      for (int gq = 0; gq < GROUP; ++gq) {
        const __m512 p = _mm512_set1_ps(score[kh * GROUP + gq][s]);
        for (int j = 0; j < 4; ++j) acc[gq][j] = _mm512_add_ps(acc[gq][j], _mm512_mul_ps(p, vv[j]));
      }
    }
    for (int gq = 0; gq < GROUP; ++gq) {
      const int h = kh * GROUP + gq;
      const __m512 l = _mm512_set1_ps(lsum[h]);
      for (int j = 0; j < 4; ++j) _mm512_storeu_ps(&out[h * HD + 16 * j], _mm512_div_ps(acc[gq][j], l));
    }
  }
}
#else
#define ROMA_ATT_CSIM_FAST 0
#endif

// One query (all HEADS heads, rotated) at position `pos` over cache rows 0..pos (already written).
// FAST (C simulation only): use attention_query_csim when it is compiled in (bit-identical); false: always the
// reference loops (testbenches).
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr,
          bool FAST = true>
void attention_query(const float q[HEADS * HD], int pos, const half_bits_t *k_cache, const half_bits_t *v_cache,
                     float out[HEADS * HD], LayerCycles &cyc) {
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE> C;
  constexpr int GROUP = C::GROUP, ROW = C::ROW, CHD = C::CHD, CH = C::CH;
  constexpr int EXP_II = C::EXP_II, PV_II = C::PV_II; // used by the PIPELINE pragmas
  (void)EXP_II;
  (void)PV_II;
  (void)ROW;
  const float scale = attention_scale<HD>();
  const int S = pos + 1; // causal: keys 0..pos

  float ql[HEADS][HD];
#pragma HLS ARRAY_PARTITION variable = ql type = cyclic factor = GROUP dim = 1
#pragma HLS ARRAY_PARTITION variable = ql type = cyclic factor = SIMD dim = 2
  static float score[HEADS][MAX_CTX]; // scores, then exp(score - max), of the current query
#pragma HLS ARRAY_PARTITION variable = score type = cyclic factor = GROUP dim = 1
#if !defined(__SYNTHESIS__) && ROMA_ATT_CSIM_FAST
  if constexpr (FAST && HD == 64 && (SIMD & (SIMD - 1)) == 0) {
    attention_query_csim<HEADS, KV_HEADS, HD, MAX_CTX>(q, pos, k_cache, v_cache, out, score);
    cyc.attention += C::query_cycles(S);
    return;
  }
#endif
  float mx[HEADS], lsum[HEADS];
#pragma HLS ARRAY_PARTITION variable = mx type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = lsum type = complete dim = 1
  float acc[HEADS][HD];
#pragma HLS ARRAY_PARTITION variable = acc type = cyclic factor = GROUP dim = 1
#pragma HLS ARRAY_PARTITION variable = acc type = cyclic factor = SIMD dim = 2
  float part[GROUP][CHD]; // chunk sums of the current (position, kv head)
#pragma HLS ARRAY_PARTITION variable = part type = complete dim = 0

QLOAD:
  for (int i = 0; i < HEADS * CHD; ++i) {
#pragma HLS PIPELINE II = timing::II
    const int h = i / CHD, dc = i % CHD;
    for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
      ql[h][dc * SIMD + l] = q[h * HD + dc * SIMD + l];
    }
    if (dc == 0) {
      mx[h] = -INFINITY;
      lsum[h] = 0.0f; // (set again at s = 0 below; this keeps gcc from seeing a read before any write)
    }
  }

  // Pass 1: scores and their max (one sequential read of rows 0..pos of K).
SCORE_POS:
  for (int s = 0; s < S; ++s) {
  SCORE_CHUNK:
    for (int c = 0; c < CH; ++c) {
#pragma HLS PIPELINE II = timing::II
      const int kh = c / CHD, dc = c % CHD;
      float kv[SIMD];
#pragma HLS ARRAY_PARTITION variable = kv type = complete dim = 1
      for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
        kv[l] = half_to_float(k_cache[(size_t)s * ROW + c * SIMD + l]);
      }
      for (int gq = 0; gq < GROUP; ++gq) {
#pragma HLS UNROLL
        const int h = kh * GROUP + gq;
        float prod[SIMD];
#pragma HLS ARRAY_PARTITION variable = prod type = complete dim = 1
        for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
          prod[l] = ql[h][dc * SIMD + l] * kv[l];
        }
        part[gq][dc] = detail::tree_sum<SIMD>(prod);
        if (dc == CHD - 1) {
          float chunks[CHD];
#pragma HLS ARRAY_PARTITION variable = chunks type = complete dim = 1
          for (int j = 0; j < CHD; ++j) {
#pragma HLS UNROLL
            chunks[j] = part[gq][j];
          }
          const float sc = detail::tree_sum<CHD>(chunks) * scale;
          score[h][s] = sc;
          mx[h] = sc > mx[h] ? sc : mx[h];
        }
      }
    }
  }

  // exp(score - max) in place, and the sums.
EXP_POS:
  for (int s = 0; s < S; ++s) {
  EXP_HEAD:
    for (int h = 0; h < HEADS; ++h) {
#pragma HLS PIPELINE II = EXP_II
#pragma HLS DEPENDENCE variable = lsum type = inter direction = RAW distance = HEADS dependent = true
      const float e = exp_f32(score[h][s] - mx[h]);
      score[h][s] = e;
      lsum[h] = (s == 0 ? 0.0f : lsum[h]) + e;
    }
  }

  // Pass 2: sum_s e[h,s] * v[s] (one sequential read of rows 0..pos of V).
PV_POS:
  for (int s = 0; s < S; ++s) {
  PV_CHUNK:
    for (int c = 0; c < CH; ++c) {
#pragma HLS PIPELINE II = PV_II
#pragma HLS DEPENDENCE variable = acc type = inter direction = RAW distance = CH dependent = true
      const int kh = c / CHD, dc = c % CHD;
      float vv[SIMD];
#pragma HLS ARRAY_PARTITION variable = vv type = complete dim = 1
      for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
        vv[l] = half_to_float(v_cache[(size_t)s * ROW + c * SIMD + l]);
      }
      for (int gq = 0; gq < GROUP; ++gq) {
#pragma HLS UNROLL
        const int h = kh * GROUP + gq;
        const float p = score[h][s];
        for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
          const int d = dc * SIMD + l;
          acc[h][d] = (s == 0 ? 0.0f : acc[h][d]) + p * vv[l];
        }
      }
    }
  }

FINAL:
  for (int i = 0; i < HEADS * CHD; ++i) {
#pragma HLS PIPELINE II = timing::II
    const int h = i / CHD, dc = i % CHD;
    for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
      out[h * HD + dc * SIMD + l] = acc[h][dc * SIMD + l] / lsum[h];
    }
  }
#ifndef __SYNTHESIS__
  cyc.attention += C::query_cycles(S);
#else
  (void)cyc;
#endif
}

// Copy rows start..start+n-1 of one cache (K or V of a layer) from the host's DDR rows into the on-chip ones
// (OnChip; start + n <= MAX_CTX, checked by the caller): one sequential burst, SIMD fp16 per cycle.
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8>
void kv_load(const half_bits_t *ddr, half_bits_t *chip, int start, int n, LayerCycles &cyc) {
  typedef AttentionConfig<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, KvPlace::OnChip> C;
  const size_t base = (size_t)start * C::ROW;
KV_LOAD:
  for (int c = 0; c < n * C::CH; ++c) {
#pragma HLS PIPELINE II = timing::II
    for (int l = 0; l < SIMD; ++l) {
#pragma HLS UNROLL
      chip[base + (size_t)c * SIMD + l] = ddr[base + (size_t)c * SIMD + l];
    }
  }
#ifndef __SYNTHESIS__
  cyc.kv_load += C::load_cycles(n);
#else
  (void)cyc;
#endif
}

// Decode step: the token at `pos` (cache rows 0..pos-1 valid; 0 <= pos < MAX_CTX, checked by the caller).
// OnChip: k_cache/v_cache are the on-chip rows, k_ddr/v_ddr the host's (written through).
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr>
void attention_decode(const float q[HEADS * HD], const float k_new[KV_HEADS * HD],
                      const float v_new[KV_HEADS * HD], int pos, half_bits_t *k_cache, half_bits_t *v_cache,
                      float out[HEADS * HD], LayerCycles &cyc, half_bits_t *k_ddr = nullptr,
                      half_bits_t *v_ddr = nullptr) {
  kv_write<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE>(k_new, v_new, pos, k_cache, v_cache, cyc, k_ddr, v_ddr);
  attention_query<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE>(q, pos, k_cache, v_cache, out, cyc);
}

// Prefill chunk: T (<= MAX_T) tokens at positions start..start+T-1 (start + T <= MAX_CTX, checked by the
// caller). All T rows are written first (as the golden does), then query i attends to keys 0..start+i.
// OnChip: as attention_decode.
template <int HEADS, int KV_HEADS, int HD, int MAX_CTX, int MAX_T, int SIMD = 8, KvPlace PLACE = KvPlace::Ddr>
void attention_prefill(const float q[MAX_T][HEADS * HD], const float k_new[MAX_T][KV_HEADS * HD],
                       const float v_new[MAX_T][KV_HEADS * HD], int start, int T, half_bits_t *k_cache,
                       half_bits_t *v_cache, float out[MAX_T][HEADS * HD], LayerCycles &cyc,
                       half_bits_t *k_ddr = nullptr, half_bits_t *v_ddr = nullptr) {
PREFILL_WRITE:
  for (int i = 0; i < T; ++i) {
    kv_write<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE>(k_new[i], v_new[i], start + i, k_cache, v_cache, cyc,
                                                        k_ddr, v_ddr);
  }
PREFILL_QUERY:
  for (int i = 0; i < T; ++i) {
    attention_query<HEADS, KV_HEADS, HD, MAX_CTX, SIMD, PLACE>(q[i], start + i, k_cache, v_cache, out[i], cyc);
  }
}

} // namespace roma

#endif // ROMA_ATTENTION_H
