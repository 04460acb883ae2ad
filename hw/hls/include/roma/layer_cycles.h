// ROMA-FPGA: shared timing constants and cycle counters of the layer kernels (norm, RoPE, SwiGLU, residual,
// embedding, attention), and the fp32 -> fp16 conversion the KV cache writer needs.
//
// types.h owns the GEMV-side `Cycles` (act_quant / candidates / gemv / output); the layer kernels count into
// `LayerCycles` with the same pattern: every kernel's Config struct derives its cycle count from the same
// constexpr II and pipeline depths its PIPELINE pragmas use, and adds it to one field, so the top (roma_core)
// sums Cycles + LayerCycles per stage into its cycles_STAGE registers (in C simulation and in synthesis: a few
// counters and adders beside each kernel, so a board reports the counts the emulated board does).
#ifndef ROMA_LAYER_CYCLES_H
#define ROMA_LAYER_CYCLES_H

#include <cstdint>

#include "types.h"

namespace roma {

namespace timing {
// Latencies assumed for the fp32 operators of the layer kernels (Vitis HLS floating-point cores, ~300 MHz).
constexpr int FSQRT_LATENCY = 16;   // fp32 square root
constexpr int FEXP_LATENCY = 20;    // fp32 exp
constexpr int FSINCOS_LATENCY = 30; // fp32 sin and cos of one angle (both computed in parallel)
constexpr int FCMP_LATENCY = 1;     // fp32 compare / max
constexpr int AXI_READ_LATENCY = 64;  // m_axi: first beat of a read burst from DDR
constexpr int AXI_WRITE_LATENCY = 32; // m_axi: write burst until the response
constexpr int RAM_LATENCY = 2;        // on-chip RAM read with output register (on-chip KV cache)

// II of a loop whose fp32 accumulator is revisited every `distance` iterations.
constexpr int acc_ii(int distance) {
  return distance >= FADD_LATENCY ? II : (FADD_LATENCY + distance - 1) / distance;
}
constexpr int ceil_log2(int n) { return n <= 1 ? 0 : 1 + ceil_log2((n + 1) / 2); }
} // namespace timing

// Cycle accounting of the layer kernels: what their pipelined loops take (iterations * II + depth per loop).
struct LayerCycles {
  uint64_t embedding = 0;  // embedding row lookup (ROM)
  uint64_t norm = 0;       // RMSNorm
  uint64_t rope = 0;       // RoPE angles (sin/cos) and rotation
  uint64_t attention = 0;  // KV write, scores, softmax, P*V
  uint64_t activation = 0; // SwiGLU
  uint64_t residual = 0;   // residual adds
  uint64_t kv_load = 0;    // on-chip KV cache refills from DDR (kv_load)
  uint64_t total() const { return embedding + norm + rope + attention + activation + residual + kv_load; }
  void reset() { embedding = norm = rope = attention = activation = residual = kv_load = 0; }
  LayerCycles &operator+=(const LayerCycles &o) {
    embedding += o.embedding, norm += o.norm, rope += o.rope, attention += o.attention, activation += o.activation;
    residual += o.residual, kv_load += o.kv_load;
    return *this;
  }
};

// fp32 -> fp16 bit pattern, round to nearest even, exactly numpy's float32.astype(float16) for every
// non-NaN input (overflow -> +-inf, fp16 subnormals, underflow -> +-0). NaN -> a quiet fp16 NaN. Integer
// logic only (synthesises to shifts and compares, no loop).
inline half_bits_t float_to_half(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return (half_bits_t)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
  if (a >= 0x47800000u) return (half_bits_t)(sign | 0x7c00u); // >= 65536: overflow
  if (a < 0x38800000u) {                                        // below 2^-14: fp16 subnormal or zero
    const uint32_t e = a >> 23;
    const uint32_t m = (a & 0x7fffffu) | (e ? 0x800000u : 0u);
    const uint32_t shift = 126u - (e ? e : 1u); // value = m * 2^(e-150); units of 2^-24: m >> (126-e)
    if (shift > 24u) return (half_bits_t)sign;  // below 2^-25: rounds to zero
    const uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1u);
    const uint32_t up = (rem > halfway || (rem == halfway && (q & 1u))) ? 1u : 0u;
    return (half_bits_t)(sign | (q + up)); // q + up == 0x400 is the smallest normal: still correct
  }
  uint32_t h = (((a >> 23) - 112u) << 10) | ((a >> 13) & 0x3ffu);
  const uint32_t rem = a & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h; // a carry rounds up the exponent (to inf at max)
  return (half_bits_t)(sign | h);
}

} // namespace roma

#endif // ROMA_LAYER_CYCLES_H
