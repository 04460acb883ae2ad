// ROMA-FPGA numerics types and constants shared by the kernels (the numerics contract in C++).
//
// The contract (host/roma_runtime/golden/numerics.py is the executable spec):
//   activations: per group of G inputs, symmetric int8 with an fp32 scale (act_quant.h);
//   weights:     b-bit unsigned codes q, fp16 scale d and fp16 minimum m per row and group (w = d*q + m);
//   dot[o,g] = sum_j q*x_q (int32, exact), xsum[g] = sum_j x_q (int32, exact),
//   y[o] = sum_g a_scale[g] * (d[o,g]*dot[o,g] + m[o,g]*xsum[g]) in fp32.
// Hot loops use native integer types (int8_t/int32_t/uint32_t): they are exact for these ranges and are
// ~9x faster than ap_int in C simulation; synthesis trims the widths from the value ranges.
#ifndef ROMA_TYPES_H
#define ROMA_TYPES_H

#include <cstdint>
#include <cstring>

namespace roma {

constexpr int ACT_QMAX = 127;       // symmetric int8 activations in [-127, 127]
constexpr int ROM_WORD_BITS = 32;   // one B-ROM word: 32 bit-plane bits (one lane of a group)
constexpr int QUAD = 4;             // activations per LUT-select candidate table
constexpr int QUAD_CANDIDATES = 16; // subsets of a quad
// Activations per cycle into a GEMV engine: act_quant's SIMD lanes, and ACT_LANES / QUAD quads per cycle in the
// candidate stage (brom_candidates). A power of two dividing the GROUP (32, 64, 128). This is the kernels' default
// (their testbenches and syn_*.cpp tops); roma_core takes the build's instead (roma_model.h ROMA_ACT_LANES, the
// board's act_lanes: 16 on the Zynq boards, 64 on the Alveo cards, at most an engine's group). Why wider on a card:
// a SmolLM2 layer (G64) on a U250's 32 PEs takes 1,728 cycles of (group, row) steps, and the quantizer and the
// candidates in front of its seven GEMVs take 932 more at 16 lanes, 392 at a whole group a cycle.
constexpr int ACT_LANES = 16;
// Token lanes: how many activation vectors an on-chip GEMV engine takes per pass over its weights (a block of prefill
// tokens: each ROM word read serves them all, weights stationary); the build's TOKEN_LANES (roma_model.h, the
// board's token_lanes) is at most this: roma_core passes a block's inputs and outputs as four pointers each.
constexpr int MAX_TOKEN_LANES = 4;
// KV ports: how many memory ports a DDR KV cache's rows are split over (the build's KV_PORTS, roma_model.h): attention
// reads a SIMD-wide chunk of a row as SIMD / PORTS lanes from each port in the same cycle, so the ports' bandwidths
// add up. KV sets: how many such groups of ports the positions alternate over (the build's KV_SETS: position p in set
// p % KV_SETS), so that decode reads two rows a cycle, one per token lane (attention.h, KV sets). At most two of each:
// roma_core has four KV cache arguments (kv_cache, kv_cache_1 for set 0; kv_cache_2, kv_cache_3 for set 1).
constexpr int MAX_KV_PORTS = 2;
constexpr int MAX_KV_SETS = 2;

typedef int8_t act_t;   // quantized activation
typedef int32_t acc_t;  // exact group dot product / activation sum (|dot| <= 255*127*128 < 2^23)
typedef int16_t cand_t; // subset sum of 4 activations (|s| <= 508)
typedef uint32_t rom_word_t;
typedef uint16_t half_bits_t; // fp16 bit pattern as stored in ROM

// Which integer datapath a B-ROM tile instantiates (chosen at compile time).
enum class Datapath : int {
  LutSelect = 0, // 16 precomputed candidates per quad, bit-plane nibbles select, planes combined by shifts
  DspMac = 1     // unpack codes, multiply-accumulate code * x (maps to DSPs)
};

// C simulation with GCC: a function compiled without the auto-vectorizer (see rope_rotate); nothing for synthesis.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__SYNTHESIS__)
#define ROMA_NO_VECTORIZE __attribute__((optimize("no-tree-vectorize")))
#else
#define ROMA_NO_VECTORIZE
#endif

// Engines of this many code bits or more multiply on DSPs (DspMac): LUT-selecting an 8-bit code's 2 quads per
// nibble plane costs twice the LUTs of a 4-bit one, a DSP multiply does not grow (placement/logic.py gemv_tile).
constexpr int DSP_MAC_MIN_BITS = 8;

// Pipeline timing model shared by the pragmas and the cycle counters.
namespace timing {
constexpr int II = 1;            // every pipelined loop in the kernels is written for II=1
constexpr int FADD_LATENCY = 4;  // fp32 adder latency assumed for loop-carried accumulations (~300 MHz)
constexpr int FMUL_LATENCY = 3;
constexpr int FDIV_LATENCY = 12; // fp32 divider (act_quant: one scale and one reciprocal per group)
constexpr int ROM_LATENCY = 2;   // BRAM ROM read with output register
} // namespace timing

// Cycle accounting: what the pipelined loops would take (iterations * II + pipeline depth per loop).
struct Cycles {
  uint64_t act_quant = 0; // activation quantizer
  uint64_t candidates = 0; // LUT-select candidate tables (or activation staging for the DSP datapath)
  uint64_t gemv = 0;       // the ROM streaming loop (integer dot products and fp32 scaling)
  uint64_t output = 0;     // writing finished outputs
  uint64_t total() const { return act_quant + candidates + gemv + output; }
  void reset() { act_quant = candidates = gemv = output = 0; }
  Cycles &operator+=(const Cycles &o) {
    act_quant += o.act_quant, candidates += o.candidates, gemv += o.gemv, output += o.output;
    return *this;
  }
};

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// fp16 -> fp32, exact for every input (normals, subnormals, +-0, inf, NaN keeps its payload's top bits),
// the same value numpy's float16.astype(float32) gives. Integer logic only.
inline float half_to_float(half_bits_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13); // rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;
  } else {
    // subnormal half: value = mant * 2^-24. Normalise with a priority encoder (no data-dependent loop):
    // hb = index of the highest set bit (0..9), shift the leading 1 up to bit 10.
    uint32_t hb = 0;
    for (uint32_t i = 0; i < 10; ++i) {
#pragma HLS UNROLL
      if (mant & (1u << i)) hb = i;
    }
    const uint32_t shift = 10u - hb;
    mant <<= shift;
    const uint32_t e = 113u - shift; // 2^-14 has biased fp32 exponent 113
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  return bits_to_float(bits);
}

} // namespace roma

#endif // ROMA_TYPES_H
