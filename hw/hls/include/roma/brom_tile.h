// ROMA-FPGA B-ROM tile: a GEMV over a slice of output rows whose weight codes live in the tile's own ROM.
//
// A tile owns ROWS consecutive output rows of a COLS-wide weight matrix quantized with BITS-bit unsigned
// codes in groups of GROUP inputs (fp16 scale d and minimum m per row and group, stored as fp16 or q8: the
// ScaleFormat template parameter). The activation vector
// (already int8-quantized by act_quant.h, with one fp32 scale per group) is broadcast to every tile; each
// tile emits finished outputs y[r] = sum_g a_scale[g] * (d[r,g]*dot[r,g] + m[r,g]*xsum[g]).
//
// ROM word layout (written only by host/roma_runtime/artifact/brom_image.py, layout 1):
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
//   LutSelect: for each quad of 4 activations the 16 subset sums are built once per GEMV (CQ quads per cycle,
//              brom_candidates); in the ROM loop
//              every nibble of a bit-plane word selects one candidate (a 16:1 mux), the GROUP/4 selections
//              of a plane are added, and planes are combined by shifts: dot = sum_p (sel_p << p). No
//              multipliers in the inner loop.
//   DspMac:    the codes are reassembled from the planes and multiplied with the activations (code*x).
// brom_candidates, brom_step_dot and brom_term are shared with the DDR-streamed tile (brom_ddr.h), which
// reads the same words from DDR instead of ROM banks.
//
// Cycle model (BromStepConfig's formulas, shared by the pragmas and the cycle counters; a GEMV engine serving
// tensors of several shapes takes ROWS and COLS at run time and its II from the fewest rows of its tensors):
//   candidates: COLS/(4*CQ) iterations (CQ quads per cycle: the activation quantizer's lanes / 4, so
//               the two stages in front of the steps keep the same pace) + CAND_DEPTH; the quads of a cycle are
//               in one group (CQ divides GROUP/4), their 16*CQ candidates written at once (cand is partitioned
//               complete on the quad dimension) and their 4*CQ activations added into the group's exact int32 sum
//   gemv:       NG*ROWS iterations at GEMV_II (= 1 when ROWS >= FADD_LATENCY) + GEMV_DEPTH; outputs are
//               written by the last group's iterations (no separate output loop).
//   Tiles are the engine's PEs (brom_gemv_tiles_rt unrolls them inside the step loop, each with its own bank;
//   tile t holds rows t, t + TILES, ...), so a matrix costs one tile's cycles. Token lanes (TOKENS datapaths per PE
//   on the same ROM words): a block of n tokens costs one candidate stage (one per lane, side by side) and one tile's
//   steps; a single token (decode) splits a tile's rows over two lanes, each reading its bank through its own port:
//   half the steps (BromStepConfig::row_split), as does a block of two on the FFN pair's engine of two banks (four
//   datapaths per PE: brom_gemv_banks_rt).
//
// Synthesis: the caller binds the arrays' storage (roma_core.cpp: a BRAM ROM, or a URAM bank written by
// CMD_LOAD_WEIGHTS); a ROM is declared static const, initialised from the packer's .dat:
//   static const roma::rom_word_t planes[TILES][PW] = {
//   #define ROMA_BROM_PLANES
//   #include "wq.dat"
//   #undef ROMA_BROM_PLANES
//   };   (likewise prm [TILES][NG*ROWS] from ROMA_BROM_SCALES (fp16) or ROMA_BROM_PARAMS (q8), and aux
//         [TILES][AUX] from ROMA_BROM_MINIMUMS or ROMA_BROM_EXPONENTS)
// C simulation instead fills the same arrays from NAME.bin at start-up (load_brom_image), and the emulated
// board runs its fast, bit-identical GEMVs: both in csim/brom_tile.h, which synthesis never reads.
#ifndef ROMA_BROM_TILE_H
#define ROMA_BROM_TILE_H

#include <cstdint>

#include "types.h"

namespace roma {

// How a tile's ROM stores the scales and minimums (artifact/brom_image.py's header field 60, roma_model.h SCALES_*).
enum class ScaleFormat : int {
  Fp16 = 0, // d and m as fp16, per (group, row)
  Q8 = 1    // 8-bit steps per (group, row) and two power-of-two exponents per row
};
constexpr int Q8_EXP_MIN = -24, Q8_EXP_MAX = 8; // read by artifact/brom_image.py; 2^-24: fp16's smallest step
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
// The aux entry of step `step` (row r): q8's exponents are per row, fp16's minimums per step.
template <ScaleFormat SF>
constexpr int brom_aux_index(int step, int r) {
  return SF == ScaleFormat::Q8 ? r : step;
}

// What a (group, row) step costs, whatever the matrix: the constants of one GEMV datapath (bits, group, scale
// format, datapath, the candidate stage's CQ quads per cycle) and its cycle formulas, evaluated with a tensor's
// run-time shape by a GEMV engine that serves tensors of several shapes (roma_core.cpp) and with the fixed shape
// of BromTileConfig.
template <int GROUP, int BITS, Datapath DP, ScaleFormat SF, int CQ_ = ACT_LANES / QUAD>
struct BromStepConfig {
  static_assert(BITS == 2 || BITS == 3 || BITS == 4 || BITS == 8, "BITS must be 2, 3, 4 or 8");
  static_assert(GROUP == 32 || GROUP == 64 || GROUP == 128, "GROUP must be 32, 64 or 128");
  static constexpr int CQ = CQ_; // quads per cycle in the candidate stage
  static constexpr int LANES = GROUP / ROM_WORD_BITS;
  static constexpr int QUADS = GROUP / QUAD;
  static_assert(CQ >= 1 && QUADS % CQ == 0, "CQ must divide the quads of a group");
  static constexpr int NIBBLES = ROM_WORD_BITS / QUAD; // quads per lane word
  static constexpr int WPS = BITS * LANES;             // ROM banks, one word each per cycle
  // Loop-carried fp32 accumulation at distance `rows`: II >= ceil(FADD_LATENCY / rows).
  static constexpr int gemv_ii(int rows) {
    return rows >= timing::FADD_LATENCY ? timing::II : (timing::FADD_LATENCY + rows - 1) / rows;
  }
  static constexpr int CAND_DEPTH = 3; // load the quads, subset adders and the 4*CQ-input sum, store
  // ROM read, select/multiply + adder tree, plane shifts, int->fp32, d*dot and m*xsum, add, *a_scale, acc
  static constexpr int INT_DEPTH = (DP == Datapath::LutSelect) ? 3 : 4;
  static constexpr int GEMV_DEPTH = timing::ROM_LATENCY + INT_DEPTH + 2 + timing::FMUL_LATENCY +
                                    timing::FADD_LATENCY + timing::FMUL_LATENCY + timing::FADD_LATENCY;
  static constexpr uint64_t cand_cycles(int cols) {
    return (uint64_t)(cols / (QUAD * CQ)) * timing::II + CAND_DEPTH;
  }
  static constexpr uint64_t gemv_cycles(int rows, int cols, int ii) {
    return (uint64_t)(cols / GROUP) * rows * ii + GEMV_DEPTH;
  }
  // The row split (brom_gemv_banks_rt): a tensor served by `slots` datapaths per PE (its engine's token lanes, or on
  // the two-bank engine of the FFN pair both banks' lanes) for a block of n tokens, where the slots are at least 2n,
  // takes its even rows through port 0 of its bank and its odd rows through port 1, n slots on each: a decode token
  // on two token lanes, or a block of two on the two-bank engine's four. Only where each slot's accumulators still
  // come back no sooner than the engine's loop allows (`split_distance`), so the II holds.
  static constexpr int split_distance(int min_rows) {
    return min_rows < timing::FADD_LATENCY ? min_rows : timing::FADD_LATENCY;
  }
  static constexpr bool row_split(int n, int slots, int rows, int min_rows) {
    return slots >= 2 * n && rows % 2 == 0 && rows / 2 >= split_distance(min_rows);
  }
  // An engine's steps for a block of n tokens over a tensor of `rows` per tile: half of them when the rows split
  static constexpr uint64_t engine_gemv_cycles(int n, int slots, int rows, int cols, int min_rows) {
    return gemv_cycles(row_split(n, slots, rows, min_rows) ? rows / 2 : rows, cols, gemv_ii(min_rows));
  }
  // One GEMV of an on-chip engine for a block of n tokens on `slots` datapaths per PE: its candidate stages (one per
  // token lane, side by side) and its steps, into their stages.
  static void count(Cycles &cyc, int n, int slots, int rows, int cols, int min_rows) {
    cyc.candidates += cand_cycles(cols);
    cyc.gemv += engine_gemv_cycles(n, slots, rows, cols, min_rows);
  }
};

// The slots (datapaths per PE) serving a call's tensor, BromStepConfig::row_split's `slots`: all of an engine's
// BANKS x TOKENS alone; in a pair on two banks its bank's TOKENS; in a pair on one bank a port each (1: no split).
constexpr int tensor_slots(int banks, int tokens, bool pair, bool same_bank) {
  return !pair ? banks * tokens : same_bank ? 1 : tokens;
}

// One tile's fixed shape (ROWS x COLS), and the engine interface brom_gemv_tiles_rt reads (MAX_ROWS, MAX_COLS,
// MIN_ROWS, bank sizes, CQ from BromStepConfig): a tile of one tensor is an engine with a single shape.
template <int ROWS, int COLS, int GROUP_, int BITS_, Datapath DP_ = Datapath::LutSelect,
          ScaleFormat SF_ = ScaleFormat::Fp16, int CQ_ = ACT_LANES / QUAD>
struct BromTileConfig : BromStepConfig<GROUP_, BITS_, DP_, SF_, CQ_> {
  typedef BromStepConfig<GROUP_, BITS_, DP_, SF_, CQ_> S;
  static_assert(COLS % GROUP_ == 0 && ROWS > 0, "COLS must be a multiple of GROUP");
  static constexpr int GROUP = GROUP_, BITS = BITS_;
  static constexpr Datapath DP = DP_;
  static constexpr ScaleFormat SF = SF_;
  static constexpr int MAX_ROWS = ROWS, MIN_ROWS = ROWS, MAX_COLS = COLS;
  static constexpr int NG = COLS / GROUP;
  static constexpr int PLANE_WORDS = NG * ROWS * S::WPS;  // per tile
  static constexpr int PARAMS = NG * ROWS;                // prm entries per tile: one per (group, row) step
  static constexpr int AUX = SF == ScaleFormat::Q8 ? ROWS : PARAMS; // aux entries: per row (q8) or step
  static constexpr int GEMV_II = S::gemv_ii(ROWS);
  static constexpr uint64_t CAND_CYCLES = S::cand_cycles(COLS);
  static constexpr uint64_t GEMV_CYCLES = S::gemv_cycles(ROWS, COLS, GEMV_II);
  static constexpr uint64_t CYCLES = CAND_CYCLES + GEMV_CYCLES;
};

// Stage 1 of a GEMV: CQ quads of activations per cycle (4*CQ consecutive xq: the caller partitions xq cyclic by a
// multiple of 4*CQ) -> their 16 candidates each (LutSelect) or the staged activations (DspMac), and the per-group
// activation sums (exact int32: the 4*CQ activations of a cycle added, then into the group's running sum).
template <int MAX_COLS, int GROUP, Datapath DP, int CQ>
void brom_candidates(int cols, const act_t xq[MAX_COLS],
                     cand_t cand[MAX_COLS / GROUP][GROUP / QUAD][QUAD_CANDIDATES], act_t xg[MAX_COLS / GROUP][GROUP],
                     acc_t xsum[MAX_COLS / GROUP]) {
#pragma HLS INLINE
  constexpr int QUADS = GROUP / QUAD, STEPS_PER_GROUP = QUADS / CQ, LANES = QUAD * CQ;
  constexpr int MAX_STEPS = MAX_COLS / LANES; // used by the pragma
  (void)MAX_STEPS;
  acc_t run = 0;
CANDIDATES:
  for (int s = 0; s < cols / LANES; ++s) {
#pragma HLS PIPELINE II = timing::II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_STEPS
    const int g = s / STEPS_PER_GROUP, k0 = (s % STEPS_PER_GROUP) * CQ; // powers of two: shifts and masks
    acc_t lanes_sum = 0;
    for (int c = 0; c < CQ; ++c) {
#pragma HLS UNROLL
      const int q = s * CQ + c, k = k0 + c;
      const acc_t x0 = xq[4 * q], x1 = xq[4 * q + 1], x2 = xq[4 * q + 2], x3 = xq[4 * q + 3];
      if (DP == Datapath::LutSelect) {
        for (int b = 0; b < QUAD_CANDIDATES; ++b) {
#pragma HLS UNROLL
          cand[g][k][b] = (cand_t)(((b & 1) ? x0 : 0) + ((b & 2) ? x1 : 0) + ((b & 4) ? x2 : 0) +
                                   ((b & 8) ? x3 : 0));
        }
      } else {
        xg[g][4 * k] = (act_t)x0;
        xg[g][4 * k + 1] = (act_t)x1;
        xg[g][4 * k + 2] = (act_t)x2;
        xg[g][4 * k + 3] = (act_t)x3;
      }
      lanes_sum += x0 + x1 + x2 + x3;
    }
    run = (k0 == 0 ? 0 : run) + lanes_sum;
    if (k0 == QUADS - CQ) xsum[g] = run;
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
      const acc_t prod = (acc_t)rom_code<GROUP, BITS>(w, j) * (acc_t)xg[j];
#pragma HLS BIND_OP variable = prod op = mul impl = dsp
      dot += prod; // a 2-8-bit x 8-bit product: on a DSP (BIND_OP), not left to LUTs
    }
  }
  return dot;
}

// A step's fp32 term a_scale * (d*dot + m*xsum) (the ints are exact in fp32 below 2^24).
inline float brom_term(float a_scale, half_bits_t d, half_bits_t m, acc_t dot, acc_t xsum) {
#pragma HLS INLINE
  return a_scale * (half_to_float(d) * (float)dot + half_to_float(m) * (float)xsum);
}

// Token lane c's output buffer (c a constant in an unrolled loop, so the select folds away and each lane writes its
// own buffer). Four pointers, not an array: no pointers to pointers in synthesis (HLS_RULES.md).
inline float *token_out(int c, float *y0, float *y1, float *y2, float *y3) {
#pragma HLS INLINE
  return c == 0 ? y0 : c == 1 ? y1 : c == 2 ? y2 : y3;
}

// A GEMV engine E (BromTileConfig, or roma_core.cpp's engine: the datapath's GROUP, BITS, DP, SF, CQ, the bounds
// MAX_ROWS, MAX_COLS, MIN_ROWS over the tensors it serves, and its bank's PLANE_WORDS, PARAMS and AUX per tile)
// folded as finn-hlslib's MVAU: TILES processing elements, each one (group, row) step of GROUP inputs per cycle
// from its own bank, in one flattened loop over the steps at II = GEMV_II. The activation side (the candidates,
// or the staged activations, and the group sums) is built once per input; each step reads the group's row of it
// once into registers and broadcasts it to every PE.
// Token lanes (weights stationary): the engine takes n <= TOKENS activation vectors (a block of prefill tokens,
// xq[c] and a_scale[c] for token c, output y_c) and each step's ROM words, read once, feed TOKENS datapaths per
// PE, so a block of tokens costs one pass over the weights (a candidate stage per token lane, side by side).
// Two banks (BANKS = 2: roma_core.cpp's FFN pair engine, a layer's w_gate in a BRAM ROM and its other linears in
// URAM, one configuration): each PE has a bank of each (bank 1's sizes are E1's) and TOKENS datapaths per bank, its
// slots, fed by either bank. A call takes tensor X from bank xbank on every slot, or (pair) X on the first TOKENS
// slots and tensor Y, of X's shape and input, from bank ybank on the others, Y into z_c: from the other bank (w_up and
// w_gate at once), or from X's own through its second port (w_k and w_v). Where a tensor has at least two slots per
// token and its bank's two ports (S::row_split: a decode token on two token lanes, a block of two on the two banks'
// four slots), its even rows go through port 0 of its bank and its odd rows through port 1 (a BRAM ROM's second
// port, a URAM bank's second; roma_core binds them two-ported), n slots each: half the steps. Outside the split the
// second port reads the first one's address.
// The codes xq and scales a_scale: a row per token lane, of XCOLS codes and XGROUPS scales (the caller's buffers, which
// may be wider than the engine's inputs: roma_core's serve every engine).
// A tensor of `rows` rows per tile and `cols` columns (run time, within the bounds) whose words start at
// plane_base, prm_base and aux_base of each tile's bank arrays (multiples of WPS for the planes; Y's at y_plane,
// y_prm, y_aux of its bank).
// Tile t holds the tensor's rows r * TILES + t (r = 0..rows-1), so each cycle of the last group writes TILES
// consecutive outputs of every token: each y_c partitioned cyclic by TILES (roma_core.cpp, GEMV_PE) takes them in
// one cycle; under the row split 2 * TILES consecutive outputs (cyclic by 2 * TILES: GEMV_OUT_LANES).
// dot_probe ([t][NG*rows], group-major like prm) is written only when PROBE is true (testbenches), X's token 0's;
// xsum_out always receives the per-group activation sums (token 0's).
template <class E, class E1, int TILES, int BANKS, bool PROBE, int TOKENS, int XCOLS = E::MAX_COLS,
          int XGROUPS = XCOLS / E::GROUP>
void brom_gemv_banks_rt(int n, int rows, int cols, const act_t xq[TOKENS][XCOLS],
                        const float a_scale[TOKENS][XGROUPS], int xbank, bool pair, int ybank,
                        const rom_word_t planes[TILES][E::PLANE_WORDS], const scale_word_t prm[TILES][E::PARAMS],
                        const scale_word_t aux[TILES][E::AUX], const rom_word_t planes1[TILES][E1::PLANE_WORDS],
                        const scale_word_t prm1[TILES][E1::PARAMS], const scale_word_t aux1[TILES][E1::AUX],
                        int plane_base, int prm_base, int aux_base, int y_plane, int y_prm, int y_aux, float *y0,
                        float *y1, float *y2, float *y3, float *z0, float *z1, float *z2, float *z3,
                        acc_t dot_probe[TILES][(E::MAX_COLS / E::GROUP) * E::MAX_ROWS],
                        acc_t xsum_out[E::MAX_COLS / E::GROUP], Cycles &cyc) {
  static_assert(TOKENS >= 1 && TOKENS <= MAX_TOKEN_LANES, "one to MAX_TOKEN_LANES token lanes");
  static_assert(BANKS == 1 || BANKS == 2, "one bank, or the FFN pair's two");
  typedef BromStepConfig<E::GROUP, E::BITS, E::DP, E::SF, E::CQ> S;
  constexpr int NG_MAX = E::MAX_COLS / E::GROUP, QUADS = S::QUADS, WPS = S::WPS, GROUP = E::GROUP;
  constexpr int MIN_ROWS = E::MIN_ROWS, STEPS_MAX = NG_MAX * E::MAX_ROWS; // used by the pragmas
  constexpr int GEMV_II = S::gemv_ii(E::MIN_ROWS); // the shortest accumulator distance of the engine's tensors
  constexpr int SLOTS = BANKS * TOKENS;            // datapaths per PE
  // bank ports per PE (two where the row split can use them) and the shortest distance at which a slot's
  // accumulator comes back: the rows of a tensor per tile, or per port under the split (S::row_split)
  constexpr int PORTS = SLOTS >= 2 ? 2 : 1;
  constexpr int ACC_DISTANCE = SLOTS >= 2 ? S::split_distance(E::MIN_ROWS) : E::MIN_ROWS;
  static_assert(S::gemv_ii(ACC_DISTANCE) == GEMV_II, "the row split keeps the engine's II");
  (void)GEMV_II;
  (void)ACC_DISTANCE;
  (void)MIN_ROWS;
  (void)STEPS_MAX;
#pragma HLS ARRAY_PARTITION variable = planes type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = planes type = cyclic factor = WPS dim = 2
#pragma HLS ARRAY_PARTITION variable = prm type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = aux type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = planes1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = planes1 type = cyclic factor = WPS dim = 2
#pragma HLS ARRAY_PARTITION variable = prm1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = aux1 type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = a_scale type = complete dim = 1

  cand_t cand[TOKENS][NG_MAX][QUADS][QUAD_CANDIDATES]; // LutSelect: subset sums of every quad, shared by the PEs
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 3
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 4
  act_t xg[TOKENS][NG_MAX][GROUP]; // DspMac: the activations of a group side by side
#pragma HLS ARRAY_PARTITION variable = xg type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = xg type = complete dim = 3
  acc_t xsum[TOKENS][NG_MAX];
#pragma HLS ARRAY_PARTITION variable = xsum type = complete dim = 1
  float acc[SLOTS][TILES][E::MAX_ROWS]; // each slot's and PE's row accumulators
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 2

GEMV_TOKENS: // a candidate stage per token lane, the block's tokens side by side
  for (int c = 0; c < TOKENS; ++c) {
#pragma HLS UNROLL
    if (c == 0 || c < n) // a block has a token at least
      brom_candidates<E::MAX_COLS, GROUP, E::DP, E::CQ>(cols, xq[c], cand[c], xg[c], xsum[c]);
  }

  // Stage 2: stream the banks, one (group, row) step per slot and PE per cycle, WPS words from each port of the PE's
  // banks: one flattened loop over the tensor's NG x rows steps (group-major; NG x rows / 2 under the row split). A
  // tensor's slot k (of the `slots` serving it) takes token k, or under the split token k % n through port k / n. A
  // pair on one bank takes a port each (`same`: no split).
  const bool same = pair && ybank == xbank;
  const int ng = cols / GROUP, slots = tensor_slots(BANKS, TOKENS, pair, same);
  const bool split = S::row_split(n, slots, rows, E::MIN_ROWS);
  const int lane_rows = split ? rows / 2 : rows, steps = ng * lane_rows;
  int g = 0, r = 0, g_rows = 0; // the step's group and row (a port's row, under the split), and g * rows
GEMV_STEPS:
  for (int step = 0; step < steps; ++step) {
#pragma HLS PIPELINE II = GEMV_II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = STEPS_MAX
#pragma HLS DEPENDENCE variable = acc type = inter direction = RAW distance = ACC_DISTANCE dependent = true
    // each slot's token, port and row, and the activation side of group g for its token, read once and broadcast to
    // the PEs (finn-hlslib's MVAU reads its input element once per fold for all PEs): one row of cand and of xg per
    // slot, into registers
    int tok[SLOTS], port[SLOTS], row[SLOTS];
    bool on[SLOTS], in_y[SLOTS];
#pragma HLS ARRAY_PARTITION variable = tok type = complete dim = 0
#pragma HLS ARRAY_PARTITION variable = port type = complete dim = 0
#pragma HLS ARRAY_PARTITION variable = row type = complete dim = 0
#pragma HLS ARRAY_PARTITION variable = on type = complete dim = 0
#pragma HLS ARRAY_PARTITION variable = in_y type = complete dim = 0
    cand_t cg[SLOTS][QUADS][QUAD_CANDIDATES];
#pragma HLS ARRAY_PARTITION variable = cg type = complete dim = 0
    act_t xgg[SLOTS][GROUP];
#pragma HLS ARRAY_PARTITION variable = xgg type = complete dim = 0
    for (int s = 0; s < SLOTS; ++s) {
#pragma HLS UNROLL
      const int k = pair ? s % TOKENS : s;
      const bool odd = split && k >= n; // the split's port 1 (k % n and k / n without a divider: k < 2n)
      in_y[s] = pair && s >= TOKENS;
      on[s] = k < (split ? 2 * n : n);
      port[s] = odd || (same && in_y[s]) ? 1 : 0;
      tok[s] = on[s] ? k - (odd ? n : 0) : 0;
      row[s] = split ? 2 * r + (odd ? 1 : 0) : r;
      for (int q = 0; q < QUADS; ++q) {
#pragma HLS UNROLL
        for (int b = 0; b < QUAD_CANDIDATES; ++b) {
#pragma HLS UNROLL
          cg[s][q][b] = cand[tok[s]][g][q][b];
        }
      }
      for (int j = 0; j < GROUP; ++j) {
#pragma HLS UNROLL
        xgg[s][j] = xg[tok[s]][g][j];
      }
    }
  GEMV_PES:
    for (int t = 0; t < TILES; ++t) {
#pragma HLS UNROLL
      rom_word_t w[BANKS][PORTS][WPS]; // each bank port's step words, read once for the slots it feeds
#pragma HLS ARRAY_PARTITION variable = w type = complete dim = 0
      HalfPair dm[BANKS][PORTS];
#pragma HLS ARRAY_PARTITION variable = dm type = complete dim = 0
      for (int b = 0; b < BANKS; ++b) {
#pragma HLS UNROLL
        // a port of X's bank reads X (Y through port 1 of a pair on one bank), of Y's bank Y; a bank neither holds
        // reads its first words (unused)
        const bool used = b == xbank || (pair && b == ybank);
        for (int p = 0; p < PORTS; ++p) {
#pragma HLS UNROLL
          const bool y = pair && b == ybank && (!same || p == 1);
          const int rr = !used ? 0 : split ? 2 * r + p : r, s = used ? g_rows + rr : 0;
          const int pl = (y ? y_plane : used ? plane_base : 0) + s * WPS, pm = (y ? y_prm : used ? prm_base : 0) + s,
                    ax = (y ? y_aux : used ? aux_base : 0) + brom_aux_index<E::SF>(s, rr);
          for (int k = 0; k < WPS; ++k) {
#pragma HLS UNROLL
            w[b][p][k] = b == 0 ? planes[t][pl + k] : planes1[t][pl + k];
          }
          dm[b][p] = b == 0 ? brom_scales<E::SF>(prm[t][pm], aux[t][ax]) : brom_scales<E::SF>(prm1[t][pm], aux1[t][ax]);
        }
      }
    GEMV_SLOTS:
      for (int s = 0; s < SLOTS; ++s) {
#pragma HLS UNROLL
        if (on[s]) {
          const int b = BANKS == 2 && (in_y[s] ? ybank : xbank) == 1 ? 1 : 0, p = port[s], c = tok[s];
          const acc_t dot = brom_step_dot<GROUP, E::BITS, E::DP>(w[b][p], cg[s], xgg[s]);
          if (PROBE && c == 0 && !in_y[s]) dot_probe[t][g_rows + row[s]] = dot;
          const float term = brom_term(a_scale[c][g], dm[b][p].d, dm[b][p].m, dot, xsum[c][g]);
          const float sum = (g == 0) ? term : acc[s][t][r] + term;
          acc[s][t][r] = sum;
          if (g == ng - 1) {
            if (in_y[s]) token_out(c, z0, z1, z2, z3)[row[s] * TILES + t] = sum;
            else token_out(c, y0, y1, y2, y3)[row[s] * TILES + t] = sum;
          }
        }
      }
    }
    if (++r == lane_rows) {
      r = 0;
      ++g;
      g_rows += rows;
    }
  }

  for (int k = 0; k < NG_MAX; ++k) {
#pragma HLS UNROLL
    if (k < ng) xsum_out[k] = xsum[0][k];
  }
  S::count(cyc, n, slots, rows, cols, E::MIN_ROWS);
}

// The engine of one bank (brom_gemv_banks_rt with BANKS = 1): tensor X, every token lane a slot.
template <class E, int TILES, bool PROBE = false, int TOKENS = 1, int XCOLS = E::MAX_COLS,
          int XGROUPS = XCOLS / E::GROUP>
void brom_gemv_tiles_rt(int n, int rows, int cols, const act_t xq[TOKENS][XCOLS],
                        const float a_scale[TOKENS][XGROUPS],
                        const rom_word_t planes[TILES][E::PLANE_WORDS], int plane_base,
                        const scale_word_t prm[TILES][E::PARAMS], int prm_base,
                        const scale_word_t aux[TILES][E::AUX], int aux_base, float *y0, float *y1, float *y2,
                        float *y3, acc_t dot_probe[TILES][(E::MAX_COLS / E::GROUP) * E::MAX_ROWS],
                        acc_t xsum_out[E::MAX_COLS / E::GROUP], Cycles &cyc) {
#pragma HLS INLINE
  brom_gemv_banks_rt<E, E, TILES, 1, PROBE, TOKENS, XCOLS, XGROUPS>(
      n, rows, cols, xq, a_scale, 0, false, 0, planes, prm, aux, planes, prm, aux, plane_base, prm_base, aux_base,
      plane_base, prm_base, aux_base, y0, y1, y2, y3, y0, y1, y2, y3, dot_probe, xsum_out, cyc);
}

// All TILES tiles of one tensor (TILES*ROWS outputs, tile t's row r is output r * TILES + t), in parallel (a fixed
// shape, one token: its codes and scales are the engine's one token lane).
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
#pragma HLS INLINE
  brom_gemv_tiles_rt<BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>, TILES, PROBE>(
      1, ROWS, COLS, reinterpret_cast<const act_t(*)[COLS]>(xq),
      reinterpret_cast<const float(*)[COLS / GROUP]>(a_scale), planes, 0, prm, 0, aux, 0, y, y, y, y, dot_probe,
      xsum_out, cyc);
}

} // namespace roma

#endif // ROMA_BROM_TILE_H
