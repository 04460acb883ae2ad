// ROMA-FPGA B-ROM tile: a GEMV over a slice of output rows whose weight codes live in the tile's own ROM.
//
// A tile owns ROWS consecutive output rows of a COLS-wide weight matrix quantized with BITS-bit unsigned
// codes in groups of GROUP inputs (fp16 scale d and minimum m per row and group, stored as fp16 or q8: the
// ScaleFormat template parameter). The activation vector
// (already int8-quantized by act_quant.h, with one fp32 scale per group) is broadcast to every tile; each
// tile emits finished outputs y[r] = sum_g a_scale[g] * (d[r,g]*dot[r,g] + m[r,g]*xsum[g]).
//
// ROM word layout (written only by host/roma_runtime/compiler/brom.py, layout 1):
//   NG = COLS/GROUP groups, LANES = GROUP/32, WPS = BITS*LANES words per (group, row) step.
//   planes[((g*ROWS + r)*BITS + p)*LANES + l]  bit j = bit p of code[r, g*GROUP + 32*l + j]
//   the scale ROM, two uint16 arrays `prm` and `aux`, by ScaleFormat:
//     Fp16: prm[g*ROWS + r] = d, aux[g*ROWS + r] = m                 fp16 bit patterns
//     Q8:   prm[g*ROWS + r] = sd | (sm & 0xff) << 8, aux[r] = (ed - Q8_EXP_MIN) | (em - Q8_EXP_MIN) << 8
//           with d = sd * 2^ed (sd unsigned), m = sm * 2^em (sm signed): exact fp16 values, decoded to fp16
//           bits by q8_to_half, so brom_term and everything after it is the same for both formats. Half the
//           scale ROM per group (plus 16 bits per row); the decoder runs beside the integer dot, which takes
//           longer, so the pipeline depth does not change.
//   Group-major: one activation group stays stationary while the tile's ROWS rows stream past, so the
//   LUT-select candidate tables of that group are reused ROWS times, and a row's fp32 accumulator is
//   revisited every ROWS cycles (the fp32 add latency does not limit II once ROWS >= FADD_LATENCY).
//   The flat planes array is partitioned cyclically by WPS: each of the WPS banks delivers one 32-bit ROM
//   word per cycle. 3-bit codes are 3 planes, so ROM and select logic scale with BITS.
//   Inside a 32-bit lane word, nibble k (bits 4k..4k+3) is bit p of codes 4k..4k+3 of that lane.
//
// Datapaths (compile-time template parameter DP, both exact int32, bit for bit the golden dot/xsum):
//   LutSelect: for each quad of 4 activations the 16 subset sums are built once per GEMV; in the ROM loop
//              every nibble of a bit-plane word selects one candidate (a 16:1 mux), the GROUP/4 selections
//              of a plane are added, and planes are combined by shifts: dot = sum_p (sel_p << p). No
//              multipliers in the inner loop.
//   DspMac:    the codes are reassembled from the planes and multiplied with the activations (code*x).
// brom_candidates, brom_step_dot and brom_term are shared with the DDR-streamed tile (brom_ddr.h), which
// reads the same words from DDR instead of ROM banks.
//
// Cycle model (constants in BromTileConfig, shared by the pragmas and the C-simulation counters):
//   candidates: COLS/4 iterations (one quad per cycle) + CAND_DEPTH
//   gemv:       NG*ROWS iterations at GEMV_II (= 1 when ROWS >= FADD_LATENCY) + GEMV_DEPTH; outputs are
//               written by the last group's iterations (no separate output loop).
//   Tiles run in parallel (brom_gemv_tiles unrolls them), so a matrix costs one tile's cycles.
//
// Synthesis: the caller declares the ROM arrays as static const, initialised from the packer's .dat:
//   static const roma::rom_word_t planes[TILES][PW] = {
//   #define ROMA_BROM_PLANES
//   #include "wq.dat"
//   #undef ROMA_BROM_PLANES
//   };   (likewise prm [TILES][NG*ROWS] from ROMA_BROM_SCALES (fp16) or ROMA_BROM_PARAMS (q8), and aux
//         [TILES][AUX] from ROMA_BROM_MINIMUMS or ROMA_BROM_EXPONENTS)
// C simulation instead fills the same arrays from NAME.bin at start-up (load_brom_image, below).
#ifndef ROMA_BROM_TILE_H
#define ROMA_BROM_TILE_H

#include <cstdint>
#ifndef __SYNTHESIS__
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#endif

#include "types.h"

namespace roma {

// How a tile's ROM stores the scales and minimums (compiler/brom.py's header field 60, roma_model.h SCALES_*).
enum class ScaleFormat : int {
  Fp16 = 0, // d and m as fp16, per (group, row)
  Q8 = 1    // 8-bit steps per (group, row) and two power-of-two exponents per row
};
constexpr int Q8_EXP_MIN = -24, Q8_EXP_MAX = 8; // compiler/quantize.py: 2^-24 is fp16's smallest step
typedef uint16_t scale_word_t;                  // a scale ROM entry (fp16 bits, or a q8 pair)

// The fp16 bit pattern of code * 2^(exp_biased + Q8_EXP_MIN): code an 8-bit step count, unsigned (0..255) or
// signed (-128..127), exp_biased in 0..Q8_EXP_MAX - Q8_EXP_MIN. Always exact: |code| <= 255 fits fp16's
// significand and 2^-24 .. 255 * 2^8 its range (a subnormal when the leading one lands below 2^-14). Integer
// logic only: a priority encoder for the leading one, then the fields by shifts.
inline half_bits_t q8_to_half(uint32_t code, bool is_signed, uint32_t exp_biased) {
#pragma HLS INLINE
  code &= 0xffu;
  const bool neg = is_signed && (code & 0x80u);
  const uint32_t mag = neg ? 0x100u - code : code; // |code|, at most 255 (128 for -128)
  uint32_t hb = 0;                                   // index of the leading one of mag
  for (uint32_t i = 0; i < 8; ++i) {
#pragma HLS UNROLL
    if (mag & (1u << i)) hb = i;
  }
  const int e = (int)(hb + exp_biased) - 9; // fp16 biased exponent: hb + (exp_biased - 24) + 15
  uint32_t bits;
  if (mag == 0) bits = 0;
  else if (e >= 1) bits = ((uint32_t)e << 10) | ((mag << (10 - hb)) & 0x3ffu);
  else bits = mag << exp_biased; // subnormal: mag * 2^exp_biased steps of 2^-24 (< 2^10 as hb + exp_biased <= 9)
  return (half_bits_t)((neg ? 0x8000u : 0u) | bits);
}

// A step's scale and minimum (fp16 bits) from its scale ROM entries: Fp16 prm = d, aux = m; Q8 prm = the step's
// sd | sm << 8, aux = its row's exponents.
struct HalfPair {
  half_bits_t d, m;
};
template <ScaleFormat SF>
inline HalfPair brom_scales(scale_word_t prm, scale_word_t aux) {
#pragma HLS INLINE
  if (SF == ScaleFormat::Q8)
    return {q8_to_half(prm & 0xffu, false, aux & 0xffu), q8_to_half(prm >> 8, true, aux >> 8)};
  return {prm, aux};
}

template <int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect,
          ScaleFormat SF = ScaleFormat::Fp16>
struct BromTileConfig {
  static_assert(BITS == 2 || BITS == 3 || BITS == 4 || BITS == 8, "BITS must be 2, 3, 4 or 8");
  static_assert(GROUP == 32 || GROUP == 64 || GROUP == 128, "GROUP must be 32, 64 or 128");
  static_assert(COLS % GROUP == 0 && ROWS > 0, "COLS must be a multiple of GROUP");
  static constexpr int NG = COLS / GROUP;
  static constexpr int LANES = GROUP / ROM_WORD_BITS;
  static constexpr int QUADS = GROUP / QUAD;
  static constexpr int NIBBLES = ROM_WORD_BITS / QUAD; // quads per lane word
  static constexpr int WPS = BITS * LANES;             // ROM banks, one word each per cycle
  static constexpr int PLANE_WORDS = NG * ROWS * WPS;  // per tile
  static constexpr int PARAMS = NG * ROWS;             // prm entries per tile: one per (group, row) step
  static constexpr int AUX = SF == ScaleFormat::Q8 ? ROWS : PARAMS; // aux entries: per row (q8) or step
  // The aux entry of step `step` (row r): q8 exponents are per row.
  static constexpr int aux_index(int step, int r) { return SF == ScaleFormat::Q8 ? r : step; }
  // Loop-carried fp32 accumulation at distance ROWS: II >= ceil(FADD_LATENCY / ROWS).
  static constexpr int GEMV_II =
      ROWS >= timing::FADD_LATENCY ? timing::II : (timing::FADD_LATENCY + ROWS - 1) / ROWS;
  static constexpr int CAND_DEPTH = 3; // load quad, subset adders, store (+ xsum)
  // ROM read, select/multiply + adder tree, plane shifts, int->fp32, d*dot and m*xsum, add, *a_scale, acc
  static constexpr int INT_DEPTH = (DP == Datapath::LutSelect) ? 3 : 4;
  static constexpr int GEMV_DEPTH = timing::ROM_LATENCY + INT_DEPTH + 2 + timing::FMUL_LATENCY +
                                    timing::FADD_LATENCY + timing::FMUL_LATENCY + timing::FADD_LATENCY;
  static constexpr uint64_t CAND_CYCLES = (uint64_t)(COLS / QUAD) * timing::II + CAND_DEPTH;
  static constexpr uint64_t GEMV_CYCLES = (uint64_t)NG * ROWS * GEMV_II + GEMV_DEPTH;
  static constexpr uint64_t CYCLES = CAND_CYCLES + GEMV_CYCLES;
};

// Stage 1 of a GEMV: one quad of activations per cycle -> its 16 candidates (LutSelect) or the staged
// activations (DspMac), and the per-group activation sums.
template <int COLS, int GROUP, Datapath DP>
void brom_candidates(const act_t xq[COLS], cand_t cand[COLS / GROUP][GROUP / QUAD][QUAD_CANDIDATES],
                     act_t xg[COLS / GROUP][GROUP], acc_t xsum[COLS / GROUP]) {
#pragma HLS INLINE
  constexpr int QUADS = GROUP / QUAD;
  acc_t run = 0;
CANDIDATES:
  for (int q = 0; q < COLS / QUAD; ++q) {
#pragma HLS PIPELINE II = timing::II
    const int g = q / QUADS, k = q % QUADS;
    const acc_t x0 = xq[4 * q], x1 = xq[4 * q + 1], x2 = xq[4 * q + 2], x3 = xq[4 * q + 3];
    if (DP == Datapath::LutSelect) {
      for (int s = 0; s < QUAD_CANDIDATES; ++s) {
#pragma HLS UNROLL
        cand[g][k][s] = (cand_t)(((s & 1) ? x0 : 0) + ((s & 2) ? x1 : 0) + ((s & 4) ? x2 : 0) +
                                 ((s & 8) ? x3 : 0));
      }
    } else {
      xg[g][4 * k] = (act_t)x0;
      xg[g][4 * k + 1] = (act_t)x1;
      xg[g][4 * k + 2] = (act_t)x2;
      xg[g][4 * k + 3] = (act_t)x3;
    }
    run = (k == 0 ? 0 : run) + x0 + x1 + x2 + x3;
    if (k == QUADS - 1) xsum[g] = run;
  }
}

// Code j (0..GROUP-1) of one (group, row) step, reassembled from its BITS plane words w.
template <int GROUP, int BITS>
inline uint32_t rom_code(const rom_word_t *w, int j) {
#pragma HLS INLINE
  constexpr int LANES = GROUP / ROM_WORD_BITS;
  const int l = j / ROM_WORD_BITS, b = j % ROM_WORD_BITS;
  uint32_t code = 0;
  for (int p = 0; p < BITS; ++p) {
#pragma HLS UNROLL
    code |= ((w[p * LANES + l] >> b) & 1u) << p;
  }
  return code;
}

// The exact int32 dot of one (group, row) step from its WPS plane words w: LutSelect (nibbles select
// candidates, planes combined by shifts) or DspMac (codes reassembled and multiplied).
template <int GROUP, int BITS, Datapath DP>
inline acc_t brom_step_dot(const rom_word_t *w, const cand_t cand[GROUP / QUAD][QUAD_CANDIDATES],
                           const act_t xg[GROUP]) {
#pragma HLS INLINE
  constexpr int LANES = GROUP / ROM_WORD_BITS, NIBBLES = ROM_WORD_BITS / QUAD;
  acc_t dot = 0;
  if (DP == Datapath::LutSelect) {
    for (int p = 0; p < BITS; ++p) {
#pragma HLS UNROLL
      acc_t sel = 0;
      for (int l = 0; l < LANES; ++l) {
#pragma HLS UNROLL
        const rom_word_t word = w[p * LANES + l];
        for (int n = 0; n < NIBBLES; ++n) {
#pragma HLS UNROLL
          sel += cand[l * NIBBLES + n][(word >> (QUAD * n)) & 0xfu];
        }
      }
      dot += sel * (acc_t(1) << p); // a constant power of two: a shift, not a multiplier
    }
  } else {
    for (int j = 0; j < GROUP; ++j) {
#pragma HLS UNROLL
      dot += (acc_t)rom_code<GROUP, BITS>(w, j) * (acc_t)xg[j]; // DSP multiply-accumulate
    }
  }
  return dot;
}

// A step's fp32 term a_scale * (d*dot + m*xsum) (the ints are exact in fp32 below 2^24).
inline float brom_term(float a_scale, half_bits_t d, half_bits_t m, acc_t dot, acc_t xsum) {
#pragma HLS INLINE
  return a_scale * (half_to_float(d) * (float)dot + half_to_float(m) * (float)xsum);
}

// One tile, one activation vector; prm and aux: its scale ROM in format SF. dot_probe (group-major like prm,
// [NG*ROWS]) is written only when PROBE is true (testbenches); xsum_out always receives the per-group
// activation sums.
template <int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect, bool PROBE = false,
          ScaleFormat SF = ScaleFormat::Fp16>
void brom_tile_gemv(const act_t xq[COLS],
                    const float a_scale[COLS / GROUP],
                    const rom_word_t planes[BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>::PLANE_WORDS],
                    const scale_word_t prm[BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>::PARAMS],
                    const scale_word_t aux[BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>::AUX],
                    float y[ROWS],
                    acc_t dot_probe[(COLS / GROUP) * ROWS],
                    acc_t xsum_out[COLS / GROUP],
                    Cycles &cyc) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF> C;
  constexpr int NG = C::NG, QUADS = C::QUADS, WPS = C::WPS;
  constexpr int GEMV_II = C::GEMV_II; // used by the PIPELINE pragma
  (void)GEMV_II;
#pragma HLS ARRAY_PARTITION variable = planes type = cyclic factor = WPS dim = 1
#pragma HLS BIND_STORAGE variable = planes type = rom_1p impl = bram

  cand_t cand[NG][QUADS][QUAD_CANDIDATES]; // LutSelect: subset sums of every quad
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 2
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 3
  act_t xg[NG][GROUP]; // DspMac: the activations of a group side by side
#pragma HLS ARRAY_PARTITION variable = xg type = complete dim = 2
  acc_t xsum[NG];
  float acc[ROWS];

  brom_candidates<COLS, GROUP, DP>(xq, cand, xg, xsum);

  // Stage 2: stream the ROM, one (group, row) step per cycle, WPS words from WPS banks.
GEMV_GROUPS:
  for (int g = 0; g < NG; ++g) {
  GEMV_ROWS:
    for (int r = 0; r < ROWS; ++r) {
#pragma HLS PIPELINE II = GEMV_II
#pragma HLS DEPENDENCE variable = acc type = inter direction = RAW distance = ROWS dependent = true
      const int step = g * ROWS + r;
      const acc_t dot = brom_step_dot<GROUP, BITS, DP>(&planes[step * WPS], cand[g], xg[g]);
      if (PROBE) dot_probe[step] = dot;
      const HalfPair dm = brom_scales<SF>(prm[step], aux[C::aux_index(step, r)]);
      const float term = brom_term(a_scale[g], dm.d, dm.m, dot, xsum[g]);
      const float sum = (g == 0) ? term : acc[r] + term;
      acc[r] = sum;
      if (g == NG - 1) y[r] = sum;
    }
  }

  for (int g = 0; g < NG; ++g) {
#pragma HLS UNROLL
    xsum_out[g] = xsum[g];
  }
#ifndef __SYNTHESIS__
  cyc.candidates += C::CAND_CYCLES;
  cyc.gemv += C::GEMV_CYCLES;
#else
  (void)cyc;
#endif
}

// All TILES tiles of one matrix (TILES*ROWS outputs), in parallel: the unrolled loop instantiates TILES
// independent tiles, each with its own ROM banks, so the matrix costs one tile's cycles.
template <int TILES, int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect,
          bool PROBE = false, ScaleFormat SF = ScaleFormat::Fp16>
void brom_gemv_tiles(const act_t xq[COLS],
                     const float a_scale[COLS / GROUP],
                     const rom_word_t planes[TILES][BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>::PLANE_WORDS],
                     const scale_word_t prm[TILES][BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>::PARAMS],
                     const scale_word_t aux[TILES][BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>::AUX],
                     float y[TILES * ROWS],
                     acc_t dot_probe[TILES][(COLS / GROUP) * ROWS],
                     acc_t xsum_out[COLS / GROUP],
                     Cycles &cyc) {
#pragma HLS ARRAY_PARTITION variable = planes type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = prm type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = aux type = complete dim = 1
  acc_t xsums[TILES][COLS / GROUP]; // every tile sums the broadcast activations itself
#pragma HLS ARRAY_PARTITION variable = xsums type = complete dim = 1
TILES_LOOP:
  for (int t = 0; t < TILES; ++t) {
#pragma HLS UNROLL
    Cycles tile_cyc;
    brom_tile_gemv<ROWS, COLS, GROUP, BITS, DP, PROBE, SF>(xq, a_scale, planes[t], prm[t], aux[t], &y[t * ROWS],
                                                           dot_probe[t], xsums[t], tile_cyc);
#ifndef __SYNTHESIS__
    if (t == 0) { // parallel tiles: one tile's time
      cyc.candidates += tile_cyc.candidates;
      cyc.gemv += tile_cyc.gemv;
    }
#else
    (void)cyc;
#endif
  }
  for (int g = 0; g < COLS / GROUP; ++g) {
#pragma HLS UNROLL
    xsum_out[g] = xsums[0][g];
  }
}

#ifndef __SYNTHESIS__
// ---- C simulation only: a fast path of brom_tile_gemv straight from the ROM words ----
// xsum[g] = sum of the GROUP activations of group g (the minimum's term), into both arrays.
template <int COLS, int GROUP>
inline void csim_group_sums(const act_t xq[COLS], acc_t xsum[COLS / GROUP], acc_t xsum_out[COLS / GROUP]) {
  for (int g = 0; g < COLS / GROUP; ++g) {
    acc_t s = 0;
    for (int j = 0; j < GROUP; ++j) s += xq[g * GROUP + j];
    xsum[g] = xsum_out[g] = s;
  }
}

// (The emulated board uses brom_tile_gemv_packed below; this one remains for tiles it cannot repack.)
// The same per-row arithmetic as brom_tile_gemv (bit for bit: exact int32 dot and xsum, the same decoded d and m,
// then per row the same fp32 sequence acc = term_0 + term_1 + ... with term = a_scale[g] * (d*dot + m*xsum[g])),
// evaluated row-major
// so that rows run in parallel (OpenMP; HLS never sees this code). The integer dot is LUT-select widened to
// octets: for every 8 activations the 256 subset sums are built once per GEMV, and each byte of a bit-plane
// word selects one (4 selections per 32-bit word instead of 8 nibble selections). tb_brom_tile checks that
// its y bit patterns equal both synthesis datapaths' on every case.
template <int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF = ScaleFormat::Fp16,
          class C = BromTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF>>
void brom_tile_gemv_csim(const act_t xq[COLS], const float a_scale[COLS / GROUP],
                         const rom_word_t planes[C::PLANE_WORDS], const scale_word_t prm[C::PARAMS],
                         const scale_word_t aux[C::AUX], float y[ROWS], acc_t xsum_out[COLS / GROUP], Cycles &cyc,
                         int threads = 0) {
  constexpr int NG = C::NG, LANES = C::LANES, WPS = C::WPS, OCTETS = COLS / 8;
  static thread_local std::vector<int16_t> tab_store; // the calling thread's tables, shared by the row threads
  tab_store.resize((size_t)OCTETS * 256);
  int16_t *tab = tab_store.data();
  for (int o = 0; o < OCTETS; ++o) {
    int16_t *t = &tab[(size_t)o * 256];
    t[0] = 0;
    for (int b = 1; b < 256; ++b) t[b] = (int16_t)(t[b & (b - 1)] + xq[8 * o + __builtin_ctz((unsigned)b)]);
  }
  acc_t xsum[NG];
  csim_group_sums<COLS, GROUP>(xq, xsum, xsum_out);
  const int nthreads = threads > 0 ? threads : 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && (long)ROWS * COLS >= 65536)
  for (int r = 0; r < ROWS; ++r) {
    float acc = 0.0f;
    for (int g = 0; g < NG; ++g) {
      const int step = g * ROWS + r;
      const rom_word_t *w = &planes[(size_t)step * WPS];
      acc_t dot = 0;
      for (int p = 0; p < BITS; ++p) {
        acc_t sel = 0;
        for (int l = 0; l < LANES; ++l) {
          const rom_word_t word = w[p * LANES + l];
          const int16_t *t = &tab[(size_t)((g * GROUP + l * ROM_WORD_BITS) / 8) * 256];
          sel += t[word & 0xffu] + t[256 + ((word >> 8) & 0xffu)] + t[512 + ((word >> 16) & 0xffu)] +
                 t[768 + (word >> 24)];
        }
        dot += sel * (acc_t(1) << p);
      }
      const HalfPair dm = brom_scales<SF>(prm[step], aux[C::aux_index(step, r)]);
      const float term = brom_term(a_scale[g], dm.d, dm.m, dot, xsum[g]);
      acc = (g == 0) ? term : acc + term;
    }
    y[r] = acc;
  }
  cyc.candidates += C::CAND_CYCLES; // the hardware's cycles, whatever the simulation's loop order
  cyc.gemv += C::GEMV_CYCLES;
}

// ---- C simulation only: the emulated board's repacked GEMV (codes unpacked once at load) ----
// The ROM's bit planes are repacked once (csim_pack_tile, at roma_emu_load_build) into a row-interleaved
// layout for int8 dot-product SIMD: rows in blocks of CSIM_BLOCK = 16 (one 32-bit lane per row), and for each
// block and group, vectors of 64 bytes whose byte 4*i + c holds columns 4k+c (c = 0..3) of row i for CPB
// consecutive 4-column chunks k, chunk s of the vector in bits s*P..s*P+P-1 (P = 2 for 2-bit codes, 4 for 3-
// and 4-bit, 8 for 8-bit: 2-bit codes take a quarter of a byte). One vpdpbusd (unsigned code x signed
// activation, 4 products summed into each row's int32) per chunk gives the 16 rows' exact group dots side by
// side; the fp32 scaling then runs on 16 rows at once with the same per-row sequence as brom_tile_gemv
// (term = a_scale[g] * (d*dot + m*xsum[g]), acc = term_0 + term_1 + ...), so y is bit-identical (tb_brom_tile
// checks both the SIMD and the portable loop against both synthesis datapaths). fp16 d and m stay fp16 in
// memory (vcvtph2ps is exact for every non-NaN half); a tile with a NaN scale or minimum is not repacked and
// the caller keeps brom_tile_gemv_csim for it. q8 tiles are repacked from their decoded halves (never NaN).
constexpr int CSIM_BLOCK = 16;
#ifndef ROMA_CSIM_PARALLEL_MIN
#define ROMA_CSIM_PARALLEL_MIN (1L << 22)
#endif
constexpr long CSIM_PARALLEL_MIN = ROMA_CSIM_PARALLEL_MIN;
constexpr int CSIM_PREFETCH_BYTES = 8192; // how far ahead the SIMD loop prefetches its codes

template <int BITS>
struct CsimPack {
  static constexpr int P = BITS <= 2 ? 2 : BITS <= 4 ? 4 : 8; // bits per stored code
  static constexpr int CPB = 8 / P;                           // 4-column chunks per 64-byte vector
};

struct CsimPackedTile {
  bool ok = false;
  int blocks = 0;
  std::vector<uint8_t> codes;     // [blocks][NG][GROUP/4/CPB][64]
  std::vector<half_bits_t> d, m;  // [blocks][NG][CSIM_BLOCK], rows past ROWS: 0
};

// A tile's words as its ROM arrays hold them, fp16 scales and minimums (the packer's source; a q8 ROM tile's
// come from load_brom_image's decoded arrays; brom_ddr.h has the DDR one).
template <int WPS>
struct RomTileSource {
  const rom_word_t *planes;
  const half_bits_t *scales, *mins;
  const rom_word_t *step_planes(int step) const { return planes + (size_t)step * WPS; }
  half_bits_t scale(int step) const { return scales[step]; }
  half_bits_t minimum(int step) const { return mins[step]; }
};

inline bool csim_is_nan(half_bits_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu); }

// Repack one tile from `src` (step_planes / scale / minimum of each (group, row) step).
template <int ROWS, int COLS, int GROUP, int BITS, class Source>
void csim_pack_tile_from(const Source &src, CsimPackedTile &pk) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS> C;
  constexpr int NG = C::NG, P = CsimPack<BITS>::P, CPB = CsimPack<BITS>::CPB;
  constexpr int VPG = GROUP / 4 / CPB;
  const int NB = (ROWS + CSIM_BLOCK - 1) / CSIM_BLOCK;
  pk = CsimPackedTile();
  for (int i = 0; i < NG * ROWS; ++i) { // NaN d or m: vcvtph2ps would quiet it; keep the reference path
    if (csim_is_nan(src.scale(i)) || csim_is_nan(src.minimum(i))) return;
  }
  pk.blocks = NB;
  pk.codes.assign((size_t)NB * NG * VPG * 64, 0);
  pk.d.assign((size_t)NB * NG * CSIM_BLOCK, 0);
  pk.m.assign((size_t)NB * NG * CSIM_BLOCK, 0);
  for (int r = 0; r < ROWS; ++r) {
    const int b = r / CSIM_BLOCK, i = r % CSIM_BLOCK;
    for (int g = 0; g < NG; ++g) {
      const size_t bg = (size_t)b * NG + g;
      const int step = g * ROWS + r;
      pk.d[bg * CSIM_BLOCK + i] = src.scale(step);
      pk.m[bg * CSIM_BLOCK + i] = src.minimum(step);
      const rom_word_t *w = src.step_planes(step);
      for (int j = 0; j < GROUP; ++j) {
        const uint32_t code = rom_code<GROUP, BITS>(w, j);
        const int k = j / 4, c = j % 4, v = k / CPB, s = k % CPB;
        pk.codes[(bg * VPG + v) * 64 + 4 * i + c] |= (uint8_t)(code << (s * P));
      }
    }
  }
  pk.ok = true;
}

template <int ROWS, int COLS, int GROUP, int BITS>
void csim_pack_tile(const rom_word_t *planes, const half_bits_t *scales, const half_bits_t *mins,
                    CsimPackedTile &pk) {
  csim_pack_tile_from<ROWS, COLS, GROUP, BITS>(
      RomTileSource<BromTileConfig<ROWS, COLS, GROUP, BITS>::WPS>{planes, scales, mins}, pk);
}

// One block of 16 rows: y16[i] for rows i of the block (portable loop: the reference of the SIMD one).
template <int COLS, int GROUP, int BITS>
inline void csim_block_portable(const uint8_t *codes, const half_bits_t *dh, const half_bits_t *mh, const act_t *xq,
                                const float *a_scale, const acc_t *xsum, float *y16) {
  constexpr int NG = COLS / GROUP, P = CsimPack<BITS>::P, CPB = CsimPack<BITS>::CPB, VPG = GROUP / 4 / CPB;
  constexpr uint32_t MASK = (1u << P) - 1u;
  float acc[CSIM_BLOCK];
  for (int g = 0; g < NG; ++g) {
    acc_t dot[CSIM_BLOCK] = {0};
    const act_t *x = xq + g * GROUP;
    for (int v = 0; v < VPG; ++v) {
      const uint8_t *s8 = codes + ((size_t)g * VPG + v) * 64;
      for (int s = 0; s < CPB; ++s) {
        const act_t *xk = x + 4 * (v * CPB + s);
        for (int i = 0; i < CSIM_BLOCK; ++i)
          for (int c = 0; c < 4; ++c) dot[i] += (acc_t)((s8[4 * i + c] >> (s * P)) & MASK) * (acc_t)xk[c];
      }
    }
    const float as = a_scale[g], xs = (float)xsum[g];
    for (int i = 0; i < CSIM_BLOCK; ++i) {
      const float d = half_to_float(dh[g * CSIM_BLOCK + i]), m = half_to_float(mh[g * CSIM_BLOCK + i]);
      const float term = as * (d * (float)dot[i] + m * xs);
      acc[i] = (g == 0) ? term : acc[i] + term;
    }
  }
  for (int i = 0; i < CSIM_BLOCK; ++i) y16[i] = acc[i];
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define ROMA_CSIM_SIMD 1
template <int COLS, int GROUP, int BITS>
inline void csim_block_simd(const uint8_t *codes, const half_bits_t *dh, const half_bits_t *mh, const act_t *xq,
                            const float *a_scale, const acc_t *xsum, float *y16) {
  constexpr int NG = COLS / GROUP, P = CsimPack<BITS>::P, CPB = CsimPack<BITS>::CPB, VPG = GROUP / 4 / CPB;
  const __m512i mask = _mm512_set1_epi8((char)((1u << P) - 1u));
  __m512 acc = _mm512_setzero_ps();
  for (int g = 0; g < NG; ++g) {
    __m512i dot0 = _mm512_setzero_si512(), dot1 = _mm512_setzero_si512(); // two chains, exact int32 sums
    const act_t *x = xq + g * GROUP;
    for (int v = 0; v < VPG; ++v) {
      const uint8_t *cv = codes + ((size_t)g * VPG + v) * 64;
      // The codes are read once per GEMV, front to back (the blocks are contiguous): with the hardware
      // prefetcher alone the loop waits on DRAM. Measured on a 2-bit 49152x576 tile: 1.7x faster with a
      // prefetch CSIM_PREFETCH_BYTES ahead (plateau from 8 to 32 KB), the 8-bit lm head 1.1x. A prefetch past
      // the end is a hint and never faults.
      _mm_prefetch((const char *)(cv + CSIM_PREFETCH_BYTES), _MM_HINT_T0);
      const __m512i sv = _mm512_loadu_si512((const void *)cv);
      for (int s = 0; s < CPB; ++s) {
        int32_t x4;
        std::memcpy(&x4, x + 4 * (v * CPB + s), 4);
        const __m512i c = P == 8 ? sv : _mm512_and_si512(_mm512_srli_epi16(sv, s * P), mask);
        if (((v * CPB + s) & 1) == 0) dot0 = _mm512_dpbusd_epi32(dot0, c, _mm512_set1_epi32(x4));
        else dot1 = _mm512_dpbusd_epi32(dot1, c, _mm512_set1_epi32(x4));
      }
    }
    const __m512 dotf = _mm512_maskz_cvtepi32_ps(0xffff, _mm512_add_epi32(dot0, dot1)); // |dot| < 2^24: exact
    const __m512 d = _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256((const __m256i *)(dh + g * CSIM_BLOCK)));
    const __m512 m = _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256((const __m256i *)(mh + g * CSIM_BLOCK)));
    const __m512 term = _mm512_mul_ps(_mm512_set1_ps(a_scale[g]),
                                      _mm512_add_ps(_mm512_mul_ps(d, dotf),
                                                    _mm512_mul_ps(m, _mm512_set1_ps((float)xsum[g]))));
    acc = (g == 0) ? term : _mm512_add_ps(acc, term);
  }
  _mm512_storeu_ps(y16, acc);
}
#else
#define ROMA_CSIM_SIMD 0
#endif

// y[ROWS] of one tile from its repacked codes (pk.ok). SIMD: the AVX-512 VNNI loop when compiled in (the
// Makefile's EMU_ARCH, on a CPU that lists those sets), else the portable loop; tb_brom_tile runs both.
template <int ROWS, int COLS, int GROUP, int BITS, bool SIMD = (ROMA_CSIM_SIMD != 0)>
void brom_tile_gemv_packed(const act_t xq[COLS], const float a_scale[COLS / GROUP], const CsimPackedTile &pk,
                           float y[ROWS], acc_t xsum_out[COLS / GROUP], Cycles &cyc, int threads = 0) {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS> C;
  constexpr int NG = C::NG, VPG = GROUP / 4 / CsimPack<BITS>::CPB;
  constexpr int NB = (ROWS + CSIM_BLOCK - 1) / CSIM_BLOCK;
  acc_t xsum[NG];
  csim_group_sums<COLS, GROUP>(xq, xsum, xsum_out);
  // Waking the row threads costs more than a layer GEMV takes here (~10 us from its packed codes): only
  // matrices of at least CSIM_PARALLEL_MIN weights (the LM head) are split across threads.
  const int nthreads = threads > 0 ? threads : 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && (long)ROWS * COLS >= CSIM_PARALLEL_MIN)
  for (int b = 0; b < NB; ++b) {
    const uint8_t *codes = &pk.codes[(size_t)b * NG * VPG * 64];
    const half_bits_t *dh = &pk.d[(size_t)b * NG * CSIM_BLOCK], *mh = &pk.m[(size_t)b * NG * CSIM_BLOCK];
    float tmp[CSIM_BLOCK];
    const bool full = (b + 1) * CSIM_BLOCK <= ROWS;
    float *out = full ? &y[b * CSIM_BLOCK] : tmp;
#if ROMA_CSIM_SIMD
    if (SIMD) csim_block_simd<COLS, GROUP, BITS>(codes, dh, mh, xq, a_scale, xsum, out);
    else
#endif
      csim_block_portable<COLS, GROUP, BITS>(codes, dh, mh, xq, a_scale, xsum, out);
    if (!full)
      for (int i = 0; b * CSIM_BLOCK + i < ROWS; ++i) y[b * CSIM_BLOCK + i] = tmp[i];
  }
  cyc.candidates += C::CAND_CYCLES; // the hardware's cycles, whatever the simulation's loop order
  cyc.gemv += C::GEMV_CYCLES;
}
#endif // __SYNTHESIS__

} // namespace roma

#ifndef __SYNTHESIS__
// ---- C simulation only: load a NAME.bin ROM image written by roma_runtime.compiler.brom.write_image ----
#include <cstdio>
#include <string>
#include <vector>

namespace roma {

struct BromImageHost {
  uint32_t bits = 0, group = 0, rows = 0, cols = 0, tiles = 0;
  uint32_t plane_words_per_tile = 0, params_per_tile = 0;
  ScaleFormat scale_format = ScaleFormat::Fp16;
  std::vector<rom_word_t> planes;  // [tiles][plane_words_per_tile]
  std::vector<half_bits_t> scales; // [tiles][params_per_tile] fp16 bits (q8: decoded, for the repacker)
  std::vector<half_bits_t> mins;   // [tiles][params_per_tile]
  std::vector<scale_word_t> q8_params; // q8: [tiles][params_per_tile] sd | sm << 8, as stored
  std::vector<scale_word_t> q8_exps;   // q8: [tiles][rows / tiles] row exponents, as stored
  // The scale ROM arrays of the kernels (brom_tile_gemv's prm, aux): [tiles][PARAMS] and [tiles][AUX].
  const scale_word_t *rom_prm() const { return scale_format == ScaleFormat::Q8 ? q8_params.data() : scales.data(); }
  const scale_word_t *rom_aux() const { return scale_format == ScaleFormat::Q8 ? q8_exps.data() : mins.data(); }
};

inline uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n) {
  static uint32_t table[256];
  static bool ready = false;
  if (!ready) {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = true;
  }
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xffu] ^ (crc >> 8);
  return ~crc;
}

inline uint32_t le32(const unsigned char *p) {
  return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

// Returns "" on success, else a message naming the file. Layout: see brom.py (72-byte header, payload).
inline std::string load_brom_image(const std::string &path, BromImageHost &img) {
  FILE *f = std::fopen(path.c_str(), "rb");
  if (!f) return "cannot open ROM image " + path;
  std::vector<unsigned char> data;
  unsigned char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.insert(data.end(), buf, buf + n);
  std::fclose(f);
  const size_t HEADER = 72;
  if (data.size() < 8 || std::string(data.begin(), data.begin() + 8) != "ROMABROM")
    return path + " is not a ROMA B-ROM image (bad magic)";
  if (data.size() < HEADER) return "ROM image " + path + " is truncated";
  const unsigned char *h = data.data();
  if (le32(h + 8) != 1 || le32(h + 12) != HEADER) return "ROM image " + path + " has an unknown version";
  std::vector<unsigned char> hz(h, h + HEADER);
  hz[56] = hz[57] = hz[58] = hz[59] = 0;
  if (crc32_update(0, hz.data(), HEADER) != le32(h + 56))
    return "ROM image " + path + " is corrupt (header checksum mismatch)";
  img.bits = le32(h + 16);
  img.group = le32(h + 20);
  img.rows = le32(h + 24);
  img.cols = le32(h + 28);
  img.tiles = le32(h + 32);
  img.plane_words_per_tile = le32(h + 44);
  img.params_per_tile = le32(h + 48);
  const uint32_t format = le32(h + 60);
  const uint64_t plen = (uint64_t)le32(h + 64) | ((uint64_t)le32(h + 68) << 32);
  if (le32(h + 36) != 32 || le32(h + 40) != 1) return "ROM image " + path + " has an unknown word layout";
  if (format > (uint32_t)ScaleFormat::Q8) return "ROM image " + path + " has an unknown scale format";
  img.scale_format = (ScaleFormat)format;
  const bool q8 = img.scale_format == ScaleFormat::Q8;
  if (!is_supported_bits((int)img.bits) || !is_supported_group((int)img.group) || img.tiles == 0 ||
      img.rows % img.tiles || img.cols % img.group)
    return "ROM image " + path + " has unsupported parameters";
  const uint64_t r = img.rows / img.tiles, ng = img.cols / img.group, lanes = img.group / 32;
  const uint64_t scale_bytes = q8 ? 2ull * img.params_per_tile + 2ull * r : 4ull * img.params_per_tile;
  if (img.plane_words_per_tile != ng * r * img.bits * lanes || img.params_per_tile != ng * r ||
      plen != (uint64_t)img.tiles * (4ull * img.plane_words_per_tile + scale_bytes))
    return "ROM image " + path + " has inconsistent sizes";
  if (data.size() != HEADER + plen) return "ROM image " + path + " is truncated or has trailing bytes";
  if (crc32_update(0, h + HEADER, plen) != le32(h + 52))
    return "ROM image " + path + " is corrupt (payload checksum mismatch)";
  const unsigned char *p = h + HEADER;
  img.planes.resize((size_t)img.tiles * img.plane_words_per_tile);
  for (size_t i = 0; i < img.planes.size(); ++i, p += 4) img.planes[i] = le32(p);
  const size_t pp = img.params_per_tile;
  std::vector<scale_word_t> &first = q8 ? img.q8_params : img.scales, &second = q8 ? img.q8_exps : img.mins;
  first.resize((size_t)img.tiles * pp);
  for (size_t i = 0; i < first.size(); ++i, p += 2) first[i] = (scale_word_t)(p[0] | (p[1] << 8));
  second.resize((size_t)img.tiles * (q8 ? r : pp));
  for (size_t i = 0; i < second.size(); ++i, p += 2) second[i] = (scale_word_t)(p[0] | (p[1] << 8));
  if (q8) { // decode into scales/mins with the kernels' decoder: the repacker and the fp16 view read those
    constexpr uint32_t EXP_RANGE = Q8_EXP_MAX - Q8_EXP_MIN;
    for (scale_word_t e : img.q8_exps)
      if ((e & 0xffu) > EXP_RANGE || (uint32_t)(e >> 8) > EXP_RANGE)
        return "ROM image " + path + " is corrupt (a q8 row exponent is out of range)";
    img.scales.resize(first.size());
    img.mins.resize(first.size());
    for (size_t t = 0; t < img.tiles; ++t)
      for (size_t step = 0; step < pp; ++step) {
        const HalfPair dm = brom_scales<ScaleFormat::Q8>(img.q8_params[t * pp + step], img.q8_exps[t * r + step % r]);
        img.scales[t * pp + step] = dm.d;
        img.mins[t * pp + step] = dm.m;
      }
  }
  return "";
}

} // namespace roma
#endif // __SYNTHESIS__

#endif // ROMA_BROM_TILE_H
