// ROMA-FPGA RMSNorm: y = (x * (1 / sqrt(mean(x*x) + eps))) * weight, fp32, the golden model's rms_norm.
//
// Evaluation order (fp32, no FMA contraction): squares x*x; their sum; ms = sum / N; r = 1 / sqrt(ms + eps);
// y = (x * r) * w. Everything but the sum is the same operation sequence as roma_runtime.golden.model.rms_norm,
// so the only difference is the summation order of the mean: numpy sums pairwise (blocks of 8 partial sums),
// the kernel keeps PARTIALS = SIMD * FADD_LATENCY interleaved partial sums (element i into partial i % PARTIALS, in
// order, so the adder's latency does not limit II) and adds them with a balanced tree. The testbench bound follows
// from that (tb_kernels.cpp, "rmsnorm").
//
// Decision: the sum of squares runs at the normalize loop's lanes (SIMD, the board's elementwise_lanes.norm), so
// its order follows the build's lanes: 4 on the Zynq boards (16 partials), 16 on the Alveo cards (64). At 4 lanes on
// every board (one order for all builds, as it was) SUMSQ took 144 of a SmolLM2 norm's 258 cycles on a U250; each
// partial is a chain of N / PARTIALS adds of FADD_LATENCY cycles, so only more partials shorten it. Both orders are
// within the testbench bound of the golden's.
//
// Three pipelined loops, II=1:
//   SUMSQ:     N/SIMD iterations + SUMSQ_DEPTH, then the unrolled REDUCE tree (REDUCE_DEPTH)
//   SCALE:     one divide by N, add eps, sqrt, reciprocal (SCALE_DEPTH, once per vector)
//   NORMALIZE: N/SIMD iterations + NORM_DEPTH
// A prefill of T tokens calls it T times (T * CYCLES); weights are a small ROM (static const float[N]).
#ifndef ROMA_NORM_H
#define ROMA_NORM_H

#include <cmath>
#include <cstdint>

#include "layer_cycles.h"
#include "types.h"

namespace roma {

template <int N, int SIMD = 4>
struct RmsNormConfig {
  static_assert(N % SIMD == 0, "SIMD must divide N");
  static constexpr int STEPS = N / SIMD;                              // SUMSQ and NORMALIZE
  static constexpr int PARTIALS = SIMD * timing::FADD_LATENCY;        // interleaved partial sums
  static constexpr int SUMSQ_DEPTH = 2 + timing::FMUL_LATENCY + timing::FADD_LATENCY;
  static constexpr int REDUCE_DEPTH = timing::ceil_log2(PARTIALS) * timing::FADD_LATENCY;
  static constexpr int SCALE_DEPTH =
      timing::FDIV_LATENCY + timing::FADD_LATENCY + timing::FSQRT_LATENCY + timing::FDIV_LATENCY;
  static constexpr int NORM_DEPTH = 2 + 2 * timing::FMUL_LATENCY + 1;
  static constexpr uint64_t CYCLES = (uint64_t)STEPS * timing::II + SUMSQ_DEPTH + REDUCE_DEPTH + SCALE_DEPTH +
                                     (uint64_t)STEPS * timing::II + NORM_DEPTH;
};

// One vector of N. y may not alias x.
template <int N, int SIMD = 4>
void rms_norm(const float x[N], const float weight[N], float eps, float y[N], LayerCycles &cyc) {
  typedef RmsNormConfig<N, SIMD> C;
  constexpr int LAT = timing::FADD_LATENCY;
#pragma HLS ARRAY_PARTITION variable = x type = cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = weight type = cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = y type = cyclic factor = SIMD dim = 1
  float part[C::PARTIALS];
#pragma HLS ARRAY_PARTITION variable = part type = complete dim = 1
  for (int i = 0; i < C::PARTIALS; ++i) {
#pragma HLS UNROLL
    part[i] = 0.0f;
  }

SUMSQ:
  for (int s = 0; s < C::STEPS; ++s) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS DEPENDENCE variable = part type = inter direction = RAW distance = LAT dependent = true
    const int slot = s % LAT; // LAT is a power of two: a mask
    for (int k = 0; k < SIMD; ++k) {
#pragma HLS UNROLL
      const float v = x[s * SIMD + k];
      part[slot * SIMD + k] += v * v;
    }
  }

REDUCE: // balanced tree over the partial sums (unrolled)
  for (int width = C::PARTIALS; width > 1; width = (width + 1) / 2) {
#pragma HLS UNROLL
    for (int i = 0; i < width / 2; ++i) {
#pragma HLS UNROLL
      part[i] = part[2 * i] + part[2 * i + 1];
    }
    if (width % 2) part[width / 2] = part[width - 1];
  }

  const float ms = part[0] / (float)N;
  const float r = 1.0f / std::sqrt(ms + eps); // Vitis HLS maps std::sqrt on float to its fp32 sqrt core

NORMALIZE:
  for (int s = 0; s < C::STEPS; ++s) {
#pragma HLS PIPELINE II = timing::II
    for (int k = 0; k < SIMD; ++k) {
#pragma HLS UNROLL
      const int i = s * SIMD + k;
      y[i] = (x[i] * r) * weight[i];
    }
  }

  cyc.norm += C::CYCLES;
}

} // namespace roma

#endif // ROMA_NORM_H
