// Self-checking testbench of the layer kernels: fp32->fp16 (layer_cycles.h), RMSNorm (norm.h), RoPE (rope.h),
// SwiGLU and residual add (activation.h), embedding lookup (embedding.h) and attention (attention.h).
//
//   tb_kernels DATA_DIR      (DATA_DIR written by gen_kernels.py from the Python golden model)
//
// Exact comparisons (bit patterns): float_to_half vs numpy astype(float16); residual add (one fp32 add);
// embedding rows (d*q + m: exact product, one rounding, as QuantizedMatrix.dequantize); the fp16 KV-cache rows
// the attention kernel writes vs the golden model's cache; the attention scale.
// Tolerances (u = 2^-24), each a worst-case bound of the two fp32 evaluations' difference:
//   rmsnorm   |y-yg| <= (0.5*(dk+dg+2) + 6) u |yg|. The only difference is the order of the sum of squares
//             (non-negative terms: relative error <= depth*u): the kernel's depth dk = N/PARTIALS +
//             log2(PARTIALS) + 1, numpy's pairwise sum dg <= 20 + log2(N/128); the sqrt halves it, the
//             reciprocal and the two products add at most 6 roundings between the two sides.
//   rope      cos/sin: |c-cg| <= 2^-22 (glibc/HLS cosf/sinf and numpy's SIMD float32 cos/sin are each within
//             ~2 ulp of the true value, |c| <= 1); y: |y-yg| <= (|x0|+|x1|) * 2^-21 (the cos/sin difference
//             times |x|, plus one rounding of each product and of the sum on each side).
//   swiglu    |y-yg| <= 12 u |yg| + 1e-38: the exps differ by <= ~6u relative (numpy's float32 exp is within
//             2.6 ulp, glibc's within 1), then 1+e, the divide and the product round once more on each side.
//   attention |o-og| <= (2 eps_h + (4S+30) u) * vmag + 1e-30, eps_h = (2 HD + 4) u * amag_h, where
//             amag_h = scale * max_s sum_d |q k| bounds each score's summation error (both orders within
//             HD*u), a score error eps shifts every probability by a factor within exp(+-2 eps), the exp,
//             the sum over S keys, the divisions and the P*V sum over S keys add (4S+30)u relative on the
//             two sides, and vmag = max_s |v[s,d]| bounds sum_s p_s |v[s,d]|.
// RMSNorm, RoPE, SwiGLU and the residual add also run at 16 lanes (RoPE: pairs, at most a head's): bit for bit the
// default lanes' output, but for RMSNorm, whose sum of squares keeps 16 lanes' partials (norm.h) and is checked
// against the golden within its own bound; a line "NAME[simdL]" each.
// Prints one line per case and `tb_kernels: M mismatches of N`; the exit code is min(M, 255).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "roma/activation.h"
#include "roma/attention.h"
#include "roma/csim/brom_tile.h"
#include "roma/embedding.h"
#include "roma/norm.h"
#include "roma/rope.h"
#include "tb_common.h"

using namespace roma;

namespace {

const double U = 1.0 / 16777216.0; // 2^-24
using tb::read_array;
typedef tb::Tally Tally; // per case: compared/mismatches, worst deviation as a fraction of its tolerance

struct Totals {
  long mismatches = 0, compared = 0;
  void add(const Tally &t, const char *kind, uint64_t cycles) {
    mismatches += t.mismatches;
    compared += t.compared;
    std::printf("  %-8s %-22s %7ld compared, %ld mismatches, worst |diff|/tol %.3f (|diff| %.3g), cycles %llu\n",
                kind, t.name.c_str(), t.compared, t.mismatches, t.worst, t.worst_abs, (unsigned long long)cycles);
  }
};

// ---- fp32 -> fp16 ----
void run_f2h(const std::string &name, long n, Totals &tot) {
  Tally t;
  t.name = name;
  const auto in = read_array<uint32_t>(name + ".in.u32", n);
  const auto want = read_array<uint16_t>(name + ".out.u16", n);
  for (long i = 0; i < n; ++i) {
    const half_bits_t h = float_to_half(bits_to_float(in[i]));
    t.exact(h == want[i], "half", i, h, want[i]);
  }
  tot.add(t, "f2h", 0);
}

// ---- RMSNorm ----
// Every elementwise kernel runs at its default lanes and at WIDE lanes (the Alveo boards' elementwise_lanes): both
// against the golden model, and the wide output bit for bit the default's (RMSNorm: within the bound of its wide
// partial sums, whose order follows the lanes, norm.h).
constexpr int WIDE = 16;

template <int N>
void run_rmsnorm(const std::string &name, int T, Totals &tot) {
  typedef RmsNormConfig<N> C;
  typedef RmsNormConfig<N, WIDE> CW;
  Tally t, tw;
  t.name = name;
  tw.name = name + "[simd16]";
  const auto x = read_array<float>(name + ".x.f32", (size_t)T * N);
  const auto w = read_array<float>(name + ".w.f32", N);
  const auto eps = read_array<float>(name + ".eps.f32", 1);
  const auto yg = read_array<float>(name + ".y.f32", (size_t)T * N);
  const double dg = 20 + timing::ceil_log2(N / 128 > 1 ? N / 128 : 1);
  auto rtol_of = [dg](int partials) { // the kernel's summation depth with `partials` partial sums
    const double dk = (double)N / partials + timing::ceil_log2(partials) + 1;
    return (0.5 * (dk + dg + 2) + 6) * U;
  };
  const double rtol = rtol_of(C::PARTIALS), rtolw = rtol_of(CW::PARTIALS);
  std::vector<float> y(N), yw(N);
  LayerCycles cyc, cycw;
  for (int r = 0; r < T; ++r) {
    cyc.reset();
    cycw.reset();
    rms_norm<N>(&x[(size_t)r * N], w.data(), eps[0], y.data(), cyc);
    rms_norm<N, WIDE>(&x[(size_t)r * N], w.data(), eps[0], yw.data(), cycw);
    for (int i = 0; i < N; ++i) {
      const double g = yg[(size_t)r * N + i];
      t.within(y[i], g, rtol * std::fabs(g), "y", (long)r * N + i);
      tw.within(yw[i], g, rtolw * std::fabs(g), "y", (long)r * N + i);
    }
  }
  tot.add(t, "rmsnorm", cyc.norm);
  tot.add(tw, "rmsnorm", cycw.norm);
}

// ---- RoPE ----
template <int HEADS, int HD>
void run_rope(const std::string &name, int T, Totals &tot) {
  constexpr int W = HEADS * HD, HP = HD / 2;
  Tally t;
  t.name = name;
  const auto pos = read_array<int32_t>(name + ".pos.i32", T);
  const auto invf = read_array<float>(name + ".invf.f32", HP);
  const auto x = read_array<float>(name + ".x.f32", (size_t)T * W);
  const auto cg = read_array<float>(name + ".cos.f32", (size_t)T * HP);
  const auto sg = read_array<float>(name + ".sin.f32", (size_t)T * HP);
  const auto yg = read_array<float>(name + ".y.f32", (size_t)T * W);
  constexpr int WIDE_PAIRS = HP < WIDE ? HP : WIDE;
  Tally tw;
  tw.name = name + "[simd" + std::to_string(WIDE_PAIRS) + "]";
  float cs[HP], sn[HP];
  std::vector<float> y(W), yw(W);
  LayerCycles cyc, cycw;
  for (int r = 0; r < T; ++r) {
    cyc.reset();
    cycw.reset();
    rope_angles<HD>(pos[r], invf.data(), cs, sn, cyc);
    rope_rotate<HEADS, HD>(&x[(size_t)r * W], cs, sn, y.data(), cyc);
    rope_rotate<HEADS, HD, WIDE_PAIRS>(&x[(size_t)r * W], cs, sn, yw.data(), cycw);
    for (int i = 0; i < W; ++i)
      tw.exact(float_to_bits(yw[i]) == float_to_bits(y[i]), "y", (long)r * W + i, yw[i], y[i]);
    for (int i = 0; i < HP; ++i) {
      t.within(cs[i], cg[(size_t)r * HP + i], 4 * U, "cos", (long)r * HP + i);
      t.within(sn[i], sg[(size_t)r * HP + i], 4 * U, "sin", (long)r * HP + i);
    }
    for (int i = 0; i < W; ++i) {
      const int p0 = i & ~1;
      const double mag = std::fabs(x[(size_t)r * W + p0]) + std::fabs(x[(size_t)r * W + p0 + 1]);
      t.within(y[i], yg[(size_t)r * W + i], mag * 8 * U, "y", (long)r * W + i);
    }
  }
  tot.add(t, "rope", cyc.rope);
  tot.add(tw, "rope", cycw.rope); // the rotations only
}

// ---- SwiGLU, residual ----
template <int N>
void run_swiglu(const std::string &name, int T, Totals &tot) {
  Tally t;
  t.name = name;
  const auto g = read_array<float>(name + ".gate.f32", (size_t)T * N);
  const auto u = read_array<float>(name + ".up.f32", (size_t)T * N);
  const auto yg = read_array<float>(name + ".y.f32", (size_t)T * N);
  Tally tw;
  tw.name = name + "[simd16]";
  std::vector<float> y(N), yw(N);
  LayerCycles cyc, cycw;
  for (int r = 0; r < T; ++r) {
    cyc.reset();
    cycw.reset();
    swiglu<N>(&g[(size_t)r * N], &u[(size_t)r * N], y.data(), cyc);
    swiglu<N, WIDE>(&g[(size_t)r * N], &u[(size_t)r * N], yw.data(), cycw);
    for (int i = 0; i < N; ++i) {
      const double want = yg[(size_t)r * N + i];
      t.within(y[i], want, 12 * U * std::fabs(want) + 1e-38, "y", (long)r * N + i);
      tw.exact(float_to_bits(yw[i]) == float_to_bits(y[i]), "y", (long)r * N + i, yw[i], y[i]);
    }
  }
  tot.add(t, "swiglu", cyc.activation);
  tot.add(tw, "swiglu", cycw.activation);
}

template <int N>
void run_residual(const std::string &name, int T, Totals &tot) {
  Tally t;
  t.name = name;
  const auto x = read_array<float>(name + ".x.f32", (size_t)T * N);
  const auto d = read_array<float>(name + ".d.f32", (size_t)T * N);
  const auto yg = read_array<float>(name + ".y.f32", (size_t)T * N);
  Tally tw;
  tw.name = name + "[simd16]";
  std::vector<float> y(N), yw(N);
  LayerCycles cyc, cycw;
  for (int r = 0; r < T; ++r) {
    cyc.reset();
    cycw.reset();
    residual_add<N>(&x[(size_t)r * N], &d[(size_t)r * N], y.data(), cyc);
    residual_add<N, WIDE>(&x[(size_t)r * N], &d[(size_t)r * N], yw.data(), cycw);
    for (int i = 0; i < N; ++i) {
      t.exact(float_to_bits(y[i]) == float_to_bits(yg[(size_t)r * N + i]), "y", (long)r * N + i, y[i],
              yg[(size_t)r * N + i]);
      tw.exact(float_to_bits(yw[i]) == float_to_bits(y[i]), "y", (long)r * N + i, yw[i], y[i]);
    }
  }
  tot.add(t, "residual", cyc.residual);
  tot.add(tw, "residual", cycw.residual);
}

// ---- embedding ----
template <int TILES, int ROWS, int COLS, int GROUP, int BITS>
void run_embed(const std::string &name, int T, Totals &tot) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS> C;
  Tally t;
  t.name = name;
  BromImageHost img;
  const std::string err = load_brom_image(tb::path(name + ".bin"), img);
  if (!err.empty() || (int)img.tiles != TILES || (int)img.rows != TILES * ROWS || (int)img.cols != COLS ||
      (int)img.bits != BITS || (int)img.group != GROUP) {
    tb::io_error("%s: %s", name.c_str(), err.empty() ? "image shape mismatch" : err.c_str());
    return;
  }
  const auto ids = read_array<int32_t>(name + ".ids.i32", T);
  const auto yg = read_array<float>(name + ".y.f32", (size_t)T * COLS);
  const auto planes = reinterpret_cast<const rom_word_t(*)[C::PLANE_WORDS]>(img.planes.data());
  const auto scales = reinterpret_cast<const half_bits_t(*)[C::PARAMS]>(img.scales.data());
  const auto mins = reinterpret_cast<const half_bits_t(*)[C::PARAMS]>(img.mins.data());
  std::vector<float> y(COLS);
  LayerCycles cyc;
  for (int r = 0; r < T; ++r) {
    cyc.reset();
    embedding_row<TILES, ROWS, COLS, GROUP, BITS>(ids[r], planes, scales, mins, y.data(), cyc);
    for (int i = 0; i < COLS; ++i)
      t.exact(float_to_bits(y[i]) == float_to_bits(yg[(size_t)r * COLS + i]), "row", (long)r * COLS + i, y[i],
              yg[(size_t)r * COLS + i]);
  }
  tot.add(t, "embed", cyc.embedding);
}

// ---- attention ----
// A prefill chunk in one call, from the synthesized pieces: its rows written (kv_write_rows), then query i attends to
// keys 0..start+i. roma_core runs the two steps itself, in blocks of its token lanes, each block's queries beside the
// previous block's FFN (tb_roma_core checks that schedule); here the pieces are checked against the golden.
template <int HEADS, int KV, int HD, int MAXCTX, int MAX_T, int SIMD, KvPlace PLACE>
void attention_prefill(const float q[MAX_T][HEADS * HD], const float k_new[MAX_T][KV * HD],
                       const float v_new[MAX_T][KV * HD], int start, int T, half_bits_t *k_cache,
                       half_bits_t *v_cache, float out[MAX_T][HEADS * HD], LayerCycles &cyc, half_bits_t *k_ddr,
                       half_bits_t *v_ddr) {
  kv_write_rows<HEADS, KV, HD, MAXCTX, MAX_T, SIMD, PLACE>(k_new, v_new, start, T, k_cache, v_cache, cyc, k_ddr,
                                                           v_ddr);
  for (int i = 0; i < T; ++i)
    attention_lanes<HEADS, KV, HD, MAXCTX, SIMD, PLACE>(&q[i], 1, start + i, 0, start + i + 1, ATT_ALL, k_cache,
                                                        v_cache, &out[i], cyc);
}

template <int HEADS, int KV, int HD, int MAXCTX, int SIMD, KvPlace PLACE>
void run_attn(const std::string &name, int calls, int ntok, Totals &tot, const char *variant) {
  constexpr int QW = HEADS * HD, ROW = KV * HD, MAX_T = 64;
  Tally t;
  t.name = name + variant;
  const auto cl = read_array<int32_t>(name + ".calls.i32", (size_t)calls * 2);
  const auto q = read_array<float>(name + ".q.f32", (size_t)ntok * QW);
  const auto k = read_array<float>(name + ".k.f32", (size_t)ntok * ROW);
  const auto v = read_array<float>(name + ".v.f32", (size_t)ntok * ROW);
  const auto og = read_array<float>(name + ".out.f32", (size_t)ntok * QW);
  const auto scale = read_array<float>(name + ".scale.f32", 1);
  const auto amag = read_array<double>(name + ".amag.f64", (size_t)ntok * HEADS);
  const auto vmag = read_array<double>(name + ".vmag.f64", (size_t)ntok * QW);
  t.exact(float_to_bits(attention_scale<HD>()) == float_to_bits(scale[0]), "scale", 0, attention_scale<HD>(),
          scale[0]);
  const int len = cl[(size_t)(calls - 1) * 2] + cl[(size_t)(calls - 1) * 2 + 1];
  const auto kg = read_array<uint16_t>(name + ".kc.u16", (size_t)len * ROW);
  const auto vg = read_array<uint16_t>(name + ".vc.u16", (size_t)len * ROW);
  std::vector<half_bits_t> kc((size_t)MAXCTX * ROW, 0), vc((size_t)MAXCTX * ROW, 0);
  std::vector<half_bits_t> kd(kc), vd(vc); // OnChip: the DDR rows written through
  static float qb[MAX_T][QW], kb[MAX_T][ROW], vb[MAX_T][ROW], ob[MAX_T][QW];
  LayerCycles cyc;
  uint64_t last_decode = 0;
  int tok = 0;
  for (int c = 0; c < calls; ++c) {
    const int start = cl[(size_t)c * 2], n = cl[(size_t)c * 2 + 1];
    if (n < 1 || n > MAX_T || start + n > MAXCTX) {
      tb::io_error("%s: call %d does not fit the instance", name.c_str(), c);
      return;
    }
    for (int i = 0; i < n; ++i) {
      std::memcpy(qb[i], &q[(size_t)(tok + i) * QW], sizeof qb[i]);
      std::memcpy(kb[i], &k[(size_t)(tok + i) * ROW], sizeof kb[i]);
      std::memcpy(vb[i], &v[(size_t)(tok + i) * ROW], sizeof vb[i]);
    }
    LayerCycles one;
    if (n == 1) {
      // roma_core's decode steps (token_qkv) on copies of the caches: the cached keys scored first, then the row
      // written, then its key and the finish: the outputs and rows of attention_decode, bit for bit
      std::vector<half_bits_t> ks(kc), vs(vc), kds(kd), vds(vd);
      static float os[1][QW];
      LayerCycles steps;
      typedef float(*Rows)[QW];
      if (start > 0)
        attention_lanes<HEADS, KV, HD, MAXCTX, SIMD, PLACE>(qb, 1, start, 0, start, ATT_START, ks.data(), vs.data(),
                                                            reinterpret_cast<Rows>(os), steps);
      kv_write<HEADS, KV, HD, MAXCTX, SIMD, PLACE>(kb[0], vb[0], start, ks.data(), vs.data(), steps, kds.data(),
                                                   vds.data());
      attention_lanes<HEADS, KV, HD, MAXCTX, SIMD, PLACE>(qb, 1, start, start > 0 ? start : 0, start + 1,
                                                          start > 0 ? ATT_FINISH : ATT_ALL, ks.data(), vs.data(),
                                                          reinterpret_cast<Rows>(os), steps);
      attention_decode<HEADS, KV, HD, MAXCTX, SIMD, PLACE>(qb[0], kb[0], vb[0], start, kc.data(), vc.data(), ob[0],
                                                           one, kd.data(), vd.data());
      bool same = ks == kc && vs == vc && kds == kd && vds == vd;
      for (int j = 0; j < QW; ++j) same = same && float_to_bits(os[0][j]) == float_to_bits(ob[0][j]);
      t.exact(same, "decode steps (scores before the row is written) against one pass", c, same, 1);
    } else
      attention_prefill<HEADS, KV, HD, MAXCTX, MAX_T, SIMD, PLACE>(qb, kb, vb, start, n, kc.data(), vc.data(), ob,
                                                                   one, kd.data(), vd.data());
    if (n == 1) last_decode = one.attention;
    cyc.attention += one.attention;
    for (int i = 0; i < n; ++i, ++tok) {
      const int S = start + i + 1;
      for (int h = 0; h < HEADS; ++h) {
        const double eps = (2.0 * HD + 4) * U * amag[(size_t)tok * HEADS + h];
        for (int d = 0; d < HD; ++d) {
          const size_t j = (size_t)tok * QW + h * HD + d;
          const double tol = (2 * eps + (4.0 * S + 30) * U) * vmag[j] + 1e-30;
          t.within(ob[i][h * HD + d], og[j], tol, "out", (long)j);
        }
      }
    }
  }
  for (size_t i = 0; i < (size_t)len * ROW; ++i) {
    t.exact(kc[i] == kg[i], "k_cache", (long)i, kc[i], kg[i]);
    t.exact(vc[i] == vg[i], "v_cache", (long)i, vc[i], vg[i]);
  }
  if constexpr (PLACE == KvPlace::OnChip) { // the DDR rows written through, and kv_load back: the on-chip rows
    std::vector<half_bits_t> kl((size_t)MAXCTX * ROW, 0);
    LayerCycles lc;
    kv_load<HEADS, KV, HD, MAXCTX, SIMD>(kd.data(), kl.data(), 1, len - 1, lc);
    for (size_t i = 0; i < (size_t)len * ROW; ++i) {
      t.exact(kd[i] == kc[i], "k_ddr (written through)", (long)i, kd[i], kc[i]);
      t.exact(vd[i] == vc[i], "v_ddr (written through)", (long)i, vd[i], vc[i]);
      t.exact(kl[i] == (i < (size_t)ROW ? 0 : kc[i]), "kv_load (rows 1..)", (long)i, kl[i], kc[i]);
    }
    t.exact(lc.kv_load == AttentionConfig<HEADS, KV, HD, MAXCTX, SIMD, PLACE>::load_cycles(len - 1), "kv_load cycles",
            0, (double)lc.kv_load, 0.0);
  }
  tot.add(t, "attn", last_decode);
  std::printf("           %s: %d calls, %d tokens, cache %d rows; cycles all calls %llu, last decode step (S=%d) %llu\n",
              variant, calls, ntok, len, (unsigned long long)cyc.attention, len, (unsigned long long)last_decode);
}

bool dispatch(const std::string &kind, const std::string &name, const std::vector<long> &a, Totals &tot) {
  if (kind == "f2h" && a.size() == 1) return run_f2h(name, a[0], tot), true;
  if (kind == "rmsnorm" && a.size() == 2) {
    if (a[0] == 64) return run_rmsnorm<64>(name, (int)a[1], tot), true;
    if (a[0] == 576) return run_rmsnorm<576>(name, (int)a[1], tot), true;
  }
  if (kind == "rope" && a.size() == 3) {
    if (a[0] == 2 && a[1] == 16) return run_rope<2, 16>(name, (int)a[2], tot), true;
    if (a[0] == 9 && a[1] == 64) return run_rope<9, 64>(name, (int)a[2], tot), true;
    if (a[0] == 3 && a[1] == 64) return run_rope<3, 64>(name, (int)a[2], tot), true;
  }
  if (kind == "swiglu" && a.size() == 2) {
    if (a[0] == 32) return run_swiglu<32>(name, (int)a[1], tot), true;
    if (a[0] == 1536) return run_swiglu<1536>(name, (int)a[1], tot), true;
  }
  if (kind == "residual" && a.size() == 2) {
    if (a[0] == 32) return run_residual<32>(name, (int)a[1], tot), true;
    if (a[0] == 576) return run_residual<576>(name, (int)a[1], tot), true;
  }
  if (kind == "embed" && a.size() == 6) {
    if (a[0] == 3 && a[1] == 8 && a[2] == 128 && a[3] == 64 && a[4] == 3)
      return run_embed<3, 8, 128, 64, 3>(name, (int)a[5], tot), true;
    if (a[0] == 4 && a[1] == 12288 && a[2] == 576 && a[3] == 32 && a[4] == 8)
      return run_embed<4, 12288, 576, 32, 8>(name, (int)a[5], tot), true;
  }
  if (kind == "attn" && a.size() == 6) {
    if (a[0] == 4 && a[1] == 2 && a[2] == 16 && a[3] == 16) {
      run_attn<4, 2, 16, 16, 4, KvPlace::Ddr>(name, (int)a[4], (int)a[5], tot, "[simd4,ddr]");
      run_attn<4, 2, 16, 16, 16, KvPlace::Ddr>(name, (int)a[4], (int)a[5], tot, "[simd16,ddr]"); // CH < FADD
      run_attn<4, 2, 16, 16, 2, KvPlace::OnChip>(name, (int)a[4], (int)a[5], tot, "[simd2,onchip]");
      return true;
    }
    if (a[0] == 9 && a[1] == 3 && a[2] == 64 && a[3] == 64) {
      run_attn<9, 3, 64, 64, 8, KvPlace::Ddr>(name, (int)a[4], (int)a[5], tot, "[simd8,ddr]");   // 128-bit port
      run_attn<9, 3, 64, 64, 32, KvPlace::Ddr>(name, (int)a[4], (int)a[5], tot, "[simd32,ddr]"); // 512-bit port
      return true;
    }
  }
  return false;
}

} // namespace

int main(int argc, char **argv) {
  if (!tb::init("tb_kernels", argc, argv, "gen_kernels.py")) return 2;
  std::vector<std::string> lines;
  if (!tb::read_cases(lines)) return 2;
  Totals tot;
  int cases = 0;
  for (const std::string &line : lines) {
    std::istringstream in(line);
    std::string kind, name;
    std::vector<long> a;
    long v;
    in >> kind >> name;
    while (in >> v) a.push_back(v);
    if (!dispatch(kind, name, a, tot)) {
      std::fprintf(stderr, "tb_kernels: no kernel instance for case: %s\n", line.c_str());
      ++tot.mismatches;
      continue;
    }
    ++cases;
  }
  return tb::finish(tot.mismatches, tot.compared, " (" + std::to_string(cases) + " cases)");
}
