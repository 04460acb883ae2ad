// ROMA-FPGA RoPE on adjacent pairs (2i, 2i+1), as ggml rotates LLaMA Q/K (GGUF row order), fp32.
//
// Decision: cos/sin are computed on chip from the integer position and a table of HD/2 inverse frequencies
// inv_freq[i] = fp32(1 / theta^(2i/HD)) that the host computes once per model (it depends only on HD and
// theta; the top keeps it as a tiny ROM or an AXI-Lite-loaded array). A full cos/sin table would be
// context_length * HD floats (8192*64*4 B = 2 MB for SmolLM2), far too much BRAM; the on-chip sin/cos costs
// one fp32 sin/cos core pipelined at II=1, HD/2 angles per position.
//   angle_i = fp32(pos) * inv_freq[i]          (the same fp32 product as golden rope_tables: bit-exact)
//   c_i = cos(angle_i), s_i = sin(angle_i)      (glibc / Vitis HLS math vs numpy: a few ulp apart)
//   y[2i] = x[2i]*c_i - x[2i+1]*s_i,  y[2i+1] = x[2i]*s_i + x[2i+1]*c_i   (golden apply_rope's order)
// fp32(pos) is exact for pos < 2^24.
//
// Loops (II=1):
//   ANGLES: HD/2 iterations + ANGLE_DEPTH (int->float, mul, sin/cos), once per position: shared by Q and K and by
//           every layer (roma_core computes a chunk's positions' angles before its layers)
//   ROTATE: HEADS*HD/2 / SIMD iterations (SIMD pairs per cycle) + ROT_DEPTH
#ifndef ROMA_ROPE_H
#define ROMA_ROPE_H

#include <cmath>
#include <cstdint>

#include "layer_cycles.h"
#include "types.h"

namespace roma {

template <int HD>
struct RopeAnglesConfig {
  static_assert(HD % 2 == 0, "head_dim must be even");
  static constexpr int PAIRS = HD / 2;
  static constexpr int ANGLE_DEPTH = 2 + timing::FMUL_LATENCY + timing::FSINCOS_LATENCY + 1;
  static constexpr uint64_t CYCLES = (uint64_t)PAIRS * timing::II + ANGLE_DEPTH;
};

template <int HEADS, int HD, int SIMD = 2>
struct RopeRotateConfig {
  static constexpr int PAIRS = HEADS * HD / 2;
  static_assert((HD / 2) % SIMD == 0, "SIMD (pairs per cycle) must divide head_dim/2");
  static constexpr int STEPS = PAIRS / SIMD;
  static constexpr int ROT_DEPTH = 2 + timing::FMUL_LATENCY + timing::FADD_LATENCY + 1;
  static constexpr uint64_t CYCLES = (uint64_t)STEPS * timing::II + ROT_DEPTH;
};

// cos/sin of the HD/2 angles of one position.
template <int HD>
void rope_angles(int pos, const float inv_freq[HD / 2], float cos_t[HD / 2], float sin_t[HD / 2],
                 LayerCycles &cyc) {
  typedef RopeAnglesConfig<HD> C;
  const float p = (float)pos;
ANGLES:
  for (int i = 0; i < C::PAIRS; ++i) {
#pragma HLS PIPELINE II = timing::II
    const float a = p * inv_freq[i];
    cos_t[i] = std::cos(a); // float overloads: cosf/sinf in C simulation, the HLS math cores in synthesis
    sin_t[i] = std::sin(a);
  }
  cyc.rope += C::CYCLES;
}

// Rotate HEADS heads of HD (x laid out [head][HD], pairs adjacent). y may not alias x. C simulation compiles it
// without GCC's vectorizer (ROMA_NO_VECTORIZE): the pair's rotation is a complex multiply, which GCC 12 vectorizes
// into a fused vfmaddsub despite -ffp-contract=off, so that its rounding depended on how the build's code inlined.
template <int HEADS, int HD, int SIMD = 2>
ROMA_NO_VECTORIZE void rope_rotate(const float x[HEADS * HD], const float cos_t[HD / 2], const float sin_t[HD / 2],
                 float y[HEADS * HD], LayerCycles &cyc) {
  typedef RopeRotateConfig<HEADS, HD, SIMD> C;
  constexpr int HP = HD / 2;
#pragma HLS ARRAY_PARTITION variable = x type = cyclic factor = 2 * SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = y type = cyclic factor = 2 * SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = cos_t type = cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = sin_t type = cyclic factor = SIMD dim = 1
ROTATE:
  for (int s = 0; s < C::STEPS; ++s) {
#pragma HLS PIPELINE II = timing::II
    for (int k = 0; k < SIMD; ++k) {
#pragma HLS UNROLL
      const int pr = s * SIMD + k; // pair index over all heads
      const int i = pr % HP;       // frequency index inside the head
      const float x0 = x[2 * pr], x1 = x[2 * pr + 1];
      const float c = cos_t[i], sn = sin_t[i];
      y[2 * pr] = x0 * c - x1 * sn;
      y[2 * pr + 1] = x0 * sn + x1 * c;
    }
  }
  cyc.rope += C::CYCLES;
}

// Which of a token's rotations a call of rope_qk makes: both, or one (a decode token rotates its query before its key
// exists: roma_core's token_qkv).
enum RopeParts : int { ROPE_Q = 1, ROPE_K = 2, ROPE_QK = ROPE_Q | ROPE_K };
// Q and K of one token, rotated by its position's angles (rope_angles): the rotations `parts` names.
template <int HEADS, int KV_HEADS, int HD, int SIMD = 2>
void rope_qk(const float cos_t[HD / 2], const float sin_t[HD / 2], const float q[HEADS * HD],
             const float k[KV_HEADS * HD], float q_out[HEADS * HD], float k_out[KV_HEADS * HD], LayerCycles &cyc,
             int parts = ROPE_QK) {
  if (parts & ROPE_Q) rope_rotate<HEADS, HD, SIMD>(q, cos_t, sin_t, q_out, cyc);
  if (parts & ROPE_K) rope_rotate<KV_HEADS, HD, SIMD>(k, cos_t, sin_t, k_out, cyc);
}

} // namespace roma

#endif // ROMA_ROPE_H
