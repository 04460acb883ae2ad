// ROMA-FPGA DDR-streamed B-ROM tiles: the GEMV of a tensor the placement plan puts in DDR ("DDR-stream"),
// reading its tile words through the core's `ddr_weights` m_axi port instead of ROM banks.
//
// Image (written only by host/roma_runtime/artifact/ddr_image.py; its module docstring has the layout):
//   4 header words [DDR_MAGIC, DDR_VERSION, words, CRC-32 of the rest], then the DDR tensors at the word
//   offsets roma_model.h gives (DDR_*). A tensor is its TILES tiles one after another; a tile is its B-ROM
//   tile's words in the ROM's step order (step = g*ROWS + r), cut into blocks of BLOCK_STEPS steps, by the
//   tensor's ScaleFormat:
//     Fp16: blocks of DDR_BLOCK_STEPS = 4 steps: the 4 steps' WPS plane words (each step's in the ROM's
//           (plane, lane) order), then 4 words scale | minimum << 16.
//     Q8:   first PREFIX_WORDS words holding the tile's ROWS row exponents, two per word (row 2i low half,
//           2i+1 high), zero-padded to whole beats; then blocks of DDR_Q8_BLOCK_STEPS = 8 steps: the 8
//           steps' plane words, then 4 words params(8b+2k) | params(8b+2k+1) << 16 (sd | sm << 8 each).
//   The same codes and scale entries in the same order as the on-chip ROM; only the per-step scale entries
//   sit next to their planes, so that one sequential pass feeds the datapath with no buffer (the scales and
//   minimums of one tile of SmolLM2's 49152-row lm head would take 1.7 MB); q8's per-row exponents (2 bytes a
//   row) are read into a ROWS-entry array first.
//
// Datapath: the same integer dot per step (brom_step_dot, LutSelect or DspMac) and the same fp32 sequence per
// row (brom_term; acc = term_0 + term_1 + ...) as brom_tile_gemv, so y is bit-identical to the same tensor
// in ROM (tb_brom_tile checks it on every case, both datapaths).
//
// Streaming: DDR_BLOCKS reads one block per iteration, BLOCK_WORDS = BLOCK_STEPS*WPS + 4 consecutive words,
// so the blocks of a tile are one sequential burst; the top declares the port 128 bits wide
// (max_widen_bitwidth), a block is BLOCK_STEPS*WPS/4 + 1 beats and starts on a beat (tiles and the q8 prefix
// are multiples of 4 words). Each iteration computes its BLOCK_STEPS steps at
// II = max(BLOCK_STEPS * GEMV_II, BLOCK_BEATS): the datapath's rate or the port's, whichever is slower. q8
// first reads its exponent prefix, one beat (8 rows) per cycle. The tiles of a tensor stream one after another
// through the one port; the candidates are built once per GEMV.
//
// Cycle model (DdrTileConfig: the pragmas and the C-simulation counters share it), per tile:
//   PREFIX_CYCLES (q8: PREFIX_WORDS / 4 + AXI_READ_LATENCY, its own burst; fp16: 0)
//   + max(compute = BLOCK_STEPS * BLOCKS * GEMV_II, stream = BLOCKS * BLOCK_BEATS) + GEMV_DEPTH
//   + AXI_READ_LATENCY,
// DDR_STREAM_BYTES_PER_CYCLE = 16: one 128-bit m_axi read port at the core clock. That is a Zynq UltraScale+
// S_AXI_HP port's width, 3.2 GB/s at KV260's 200 MHz and 4.8 GB/s at U250's 300 MHz, below the boards'
// 19.2 GB/s DDR4 peak, so the port, not the DRAM, bounds the stream (an Alveo port could be 512 bits wide).
//
// C simulation (the emulated board) does not run the DDR_BLOCKS loop for speed: roma_core repacks a DDR tile
// from the ddr_weights buffer once per image (csim_pack_ddr_tile, DdrTileSource: csim/brom_ddr.h) and runs the same packed SIMD
// path as a ROM tile. brom_ddr_gemv runs for a tile that cannot be repacked, and in tb_brom_tile.
#ifndef ROMA_BROM_DDR_H
#define ROMA_BROM_DDR_H

#include <cstdint>

#include "brom_tile.h"
#include "layer_cycles.h"
#include "types.h"

namespace roma {

constexpr uint32_t DDR_MAGIC = 0x52444452u;    // "RDDR"; artifact/ddr_image.py reads these four
constexpr uint32_t DDR_VERSION = 1;
constexpr int DDR_HEADER_WORDS = 4;             // magic, version, words, CRC-32
constexpr int DDR_BLOCK_STEPS = 4;              // fp16 steps per block: their scale|minimum words are one beat
constexpr int DDR_Q8_BLOCK_STEPS = 8;           // q8 steps per block: their 16-bit params are one beat
constexpr int DDR_STREAM_BYTES_PER_CYCLE = 16;  // the ddr_weights m_axi port: 128 bits per core cycle
constexpr int DDR_WORDS_PER_CYCLE = DDR_STREAM_BYTES_PER_CYCLE / 4;

// The stream's constants for one GEMV datapath (group, bits, datapath, scale format) and its formulas for a tile of
// `rows` rows and `cols` columns, evaluated at run time by a GEMV engine that serves tensors of several shapes
// (roma_core.cpp) and at compile time by DdrTileConfig.
template <int GROUP, int BITS, Datapath DP, ScaleFormat SF>
struct DdrStepConfig {
  typedef BromStepConfig<GROUP, BITS, DP, SF> S;
  static constexpr bool Q8 = SF == ScaleFormat::Q8;
  static constexpr int WPS = S::WPS;
  static constexpr int BLOCK_STEPS = Q8 ? DDR_Q8_BLOCK_STEPS : DDR_BLOCK_STEPS;
  static constexpr int PARAM_WORDS = DDR_WORDS_PER_CYCLE; // a block's scale entries: one beat
  static constexpr int BLOCK_WORDS = BLOCK_STEPS * WPS + PARAM_WORDS;
  static constexpr int BLOCK_BEATS = (BLOCK_WORDS + DDR_WORDS_PER_CYCLE - 1) / DDR_WORDS_PER_CYCLE;
  // the block loop's II for an accumulator revisited every `rows` steps: the datapath's rate or the port's
  static constexpr int block_ii(int rows) {
    return BLOCK_STEPS * S::gemv_ii(rows) > BLOCK_BEATS ? BLOCK_STEPS * S::gemv_ii(rows) : BLOCK_BEATS;
  }
  // Rows are revisited every `rows` steps, rows / BLOCK_STEPS block iterations (at least one).
  static constexpr int acc_distance(int rows) { return rows / BLOCK_STEPS > 0 ? rows / BLOCK_STEPS : 1; }
  static constexpr int prefix_words(int rows) { return Q8 ? (rows + 7) / 8 * DDR_WORDS_PER_CYCLE : 0; } // 8 rows a beat
  static constexpr int steps(int rows, int cols) { return cols / GROUP * rows; }
  static constexpr int blocks(int rows, int cols) { return (steps(rows, cols) + BLOCK_STEPS - 1) / BLOCK_STEPS; }
  static constexpr long long tile_words(int rows, int cols) {
    return prefix_words(rows) + (long long)blocks(rows, cols) * BLOCK_WORDS;
  }
  // PREFIX_CYCLES + BLOCKS * block_ii + depth: the block loop runs at the slower of the datapath and the port
  static constexpr uint64_t tile_cycles(int rows, int cols, int ii_rows) {
    return (Q8 ? (uint64_t)(prefix_words(rows) / DDR_WORDS_PER_CYCLE) + timing::AXI_READ_LATENCY : 0) +
           (uint64_t)blocks(rows, cols) * block_ii(ii_rows) + S::GEMV_DEPTH + timing::AXI_READ_LATENCY;
  }
  // The scale entries of step i of a block whose words are w (q8: ex = the tile's row exponents, r the row).
  static HalfPair scales(const rom_word_t *w, int i, const scale_word_t *ex, int r) {
#pragma HLS INLINE
    const rom_word_t pw = w[BLOCK_STEPS * WPS + i * PARAM_WORDS / BLOCK_STEPS];
    if (Q8) return brom_scales<SF>((scale_word_t)(pw >> (16 * (i & 1))), ex[r]);
    return brom_scales<SF>((scale_word_t)(pw & 0xffffu), (scale_word_t)(pw >> 16));
  }
  // One GEMV of a tensor of `tiles` such tiles: candidates once, then the tiles one after another.
  static void count(Cycles &cyc, int tiles, int rows, int cols, int ii_rows) {
    cyc.candidates += S::cand_cycles(cols);
    cyc.gemv += (uint64_t)tiles * tile_cycles(rows, cols, ii_rows);
  }
};

// One tensor's fixed tile shape (what the DDR image and the testbenches name).
template <int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect,
          ScaleFormat SF = ScaleFormat::Fp16>
struct DdrTileConfig : DdrStepConfig<GROUP, BITS, DP, SF> {
  typedef DdrStepConfig<GROUP, BITS, DP, SF> B;
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF> C;
  static constexpr int STEPS = C::PARAMS; // (group, row) steps of a tile
  static constexpr int PREFIX_WORDS = B::prefix_words(ROWS);
  static constexpr int PREFIX_BEATS = PREFIX_WORDS / DDR_WORDS_PER_CYCLE;
  static constexpr int BLOCKS = B::blocks(ROWS, COLS);
  static constexpr long long TILE_WORDS = B::tile_words(ROWS, COLS);
  static constexpr int BLOCK_II = B::block_ii(ROWS);
  static constexpr uint64_t TILE_CYCLES = B::tile_cycles(ROWS, COLS, ROWS);
  // its parts (the testbench prints them): the q8 prefix, and the block loop's datapath and port rates
  static constexpr uint64_t PREFIX_CYCLES = B::Q8 ? (uint64_t)PREFIX_BEATS + timing::AXI_READ_LATENCY : 0;
  static constexpr uint64_t COMPUTE_CYCLES = (uint64_t)BLOCKS * B::BLOCK_STEPS * C::GEMV_II;
  static constexpr uint64_t STREAM_CYCLES = (uint64_t)BLOCKS * B::BLOCK_BEATS;
  static void count(Cycles &cyc, int tiles) { B::count(cyc, tiles, ROWS, COLS, ROWS); }
};

// All TILES tiles of a DDR-streamed tensor of `rows` rows per tile and `cols` columns (run time, within engine E's
// bounds: MAX_ROWS, MAX_COLS, MIN_ROWS, GROUP, BITS, DP, SF) from `image` (the tensor's first word in ddr_weights,
// an m_axi pointer). dot_probe and xsum_out as brom_gemv_tiles.
template <class E, int TILES, bool PROBE = false>
void brom_ddr_gemv_rt(int rows, int cols, const act_t xq[E::MAX_COLS], const float a_scale[E::MAX_COLS / E::GROUP],
                      const rom_word_t *image, float *y, acc_t dot_probe[TILES][(E::MAX_COLS / E::GROUP) * E::MAX_ROWS],
                      acc_t xsum_out[E::MAX_COLS / E::GROUP], Cycles &cyc) {
  typedef DdrStepConfig<E::GROUP, E::BITS, E::DP, E::SF> D;
  typedef typename D::S S;
  constexpr int GROUP = E::GROUP, NG_MAX = E::MAX_COLS / GROUP, QUADS = S::QUADS, WPS = S::WPS;
  constexpr int BLOCK_WORDS = D::BLOCK_WORDS, BLOCK_STEPS = D::BLOCK_STEPS, EX_ROWS = D::Q8 ? E::MAX_ROWS : 1;
  constexpr int BLOCK_II = D::block_ii(E::MIN_ROWS), ACC_DISTANCE = D::acc_distance(E::MIN_ROWS); // the pragmas'
  constexpr int MAX_BLOCKS = D::blocks(E::MAX_ROWS, E::MAX_COLS), MAX_PREFIX_BEATS =
      D::prefix_words(E::MAX_ROWS) / DDR_WORDS_PER_CYCLE + 1;
  (void)BLOCK_II;
  (void)ACC_DISTANCE;
  (void)MAX_BLOCKS;
  (void)MAX_PREFIX_BEATS;

  cand_t cand[NG_MAX][QUADS][QUAD_CANDIDATES];
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 2
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 3
  act_t xg[NG_MAX][GROUP];
#pragma HLS ARRAY_PARTITION variable = xg type = complete dim = 2
  acc_t xsum[NG_MAX];
  float acc[E::MAX_ROWS];
#pragma HLS ARRAY_PARTITION variable = acc type = cyclic factor = BLOCK_STEPS dim = 1
  scale_word_t ex[EX_ROWS]; // q8: the tile's row exponents
#pragma HLS ARRAY_PARTITION variable = ex type = cyclic factor = BLOCK_STEPS dim = 1

  brom_candidates<E::MAX_COLS, GROUP, E::DP>(cols, xq, cand, xg, xsum);

  const int ng = cols / GROUP, steps = D::steps(rows, cols), blocks = D::blocks(rows, cols);
  const int prefix_beats = D::prefix_words(rows) / DDR_WORDS_PER_CYCLE;
  const long long tile_words = D::tile_words(rows, cols);
DDR_TILES:
  for (int t = 0; t < TILES; ++t) {
    const rom_word_t *src = image + (long long)t * tile_words;
  DDR_EXPONENTS: // q8 only (no prefix for fp16): one beat, 8 rows, per cycle
    for (int k = 0; k < prefix_beats; ++k) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 0 max = MAX_PREFIX_BEATS
      for (int i = 0; i < 2 * DDR_WORDS_PER_CYCLE; ++i) {
#pragma HLS UNROLL
        const int row = 2 * DDR_WORDS_PER_CYCLE * k + i;
        const rom_word_t w = src[DDR_WORDS_PER_CYCLE * k + i / 2];
        if (row < EX_ROWS && row < rows) ex[row] = (scale_word_t)(w >> (16 * (i & 1)));
      }
    }
    src += D::prefix_words(rows);
    int g = 0, r = 0; // the (group, row) of the next step
  DDR_BLOCKS:
    for (int b = 0; b < blocks; ++b) {
#pragma HLS PIPELINE II = BLOCK_II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_BLOCKS
#pragma HLS DEPENDENCE variable = acc type = inter direction = RAW distance = ACC_DISTANCE dependent = true
      rom_word_t w[BLOCK_WORDS];
#pragma HLS ARRAY_PARTITION variable = w type = complete
      for (int k = 0; k < BLOCK_WORDS; ++k) {
#pragma HLS UNROLL
        w[k] = src[(long long)b * BLOCK_WORDS + k]; // consecutive: one burst per tile
      }
      for (int i = 0; i < BLOCK_STEPS; ++i) {
#pragma HLS UNROLL
        const int step = b * BLOCK_STEPS + i;
        if (step < steps) { // the last block's missing steps are padding
          const acc_t dot = brom_step_dot<GROUP, E::BITS, E::DP>(&w[i * WPS], cand[g], xg[g]);
          if (PROBE) dot_probe[t][step] = dot;
          const HalfPair dm = D::scales(w, i, ex, D::Q8 ? r : 0);
          const float term = brom_term(a_scale[g], dm.d, dm.m, dot, xsum[g]);
          const float sum = (g == 0) ? term : acc[r] + term;
          acc[r] = sum;
          if (g == ng - 1) y[r * TILES + t] = sum; // tile t holds rows t, t + TILES, ...
          if (++r == rows) {
            r = 0;
            ++g;
          }
        }
      }
    }
  }
  for (int k = 0; k < NG_MAX; ++k) {
#pragma HLS UNROLL
    if (k < ng) xsum_out[k] = xsum[k];
  }
  D::count(cyc, TILES, rows, cols, E::MIN_ROWS);
}

// All TILES tiles of one DDR-streamed tensor (a fixed shape).
template <int TILES, int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect,
          bool PROBE = false, ScaleFormat SF = ScaleFormat::Fp16>
void brom_ddr_gemv(const act_t xq[COLS], const float a_scale[COLS / GROUP], const rom_word_t *image,
                   float y[TILES * ROWS], acc_t dot_probe[TILES][(COLS / GROUP) * ROWS],
                   acc_t xsum_out[COLS / GROUP], Cycles &cyc) {
#pragma HLS INLINE
  brom_ddr_gemv_rt<BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>, TILES, PROBE>(ROWS, COLS, xq, a_scale, image, y,
                                                                                  dot_probe, xsum_out, cyc);
}

} // namespace roma

#endif // ROMA_BROM_DDR_H
