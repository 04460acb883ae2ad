// ROMA-FPGA DDR-streamed B-ROM tiles: the GEMV of a tensor the placement plan puts in DDR ("DDR-stream"),
// reading its tile words through the core's `ddr_weights` m_axi port instead of ROM banks.
//
// Image (written only by host/roma_runtime/compiler/brom.py, ddr_image; its module docstring has the layout):
//   4 header words [DDR_MAGIC, DDR_VERSION, words, CRC-32 of the rest], then the DDR tensors at the word
//   offsets roma_model.h gives (DDR_*). A tensor is its TILES tiles one after another; a tile is its B-ROM
//   tile's words in the ROM's step order (step = g*ROWS + r), cut into blocks of DDR_BLOCK_STEPS = 4 steps:
//   the 4 steps' WPS plane words (each step's in the ROM's (plane, lane) order), then 4 words
//   scale | minimum << 16. The same codes, scales and minimums in the same order as the on-chip ROM; only the
//   (scale, minimum) pairs sit next to their planes, so that one sequential pass feeds the datapath with no
//   buffer (the scales and minimums of one tile of SmolLM2's 49152-row lm head would take 1.7 MB).
//
// Datapath: the same integer dot per step (brom_step_dot, LutSelect or DspMac) and the same fp32 sequence per
// row (brom_term; acc = term_0 + term_1 + ...) as brom_tile_gemv, so y is bit-identical to the same tensor
// in ROM (tb_brom_tile checks it on every case, both datapaths).
//
// Streaming: DDR_BLOCKS reads one block per iteration, BLOCK_WORDS = 4*(WPS+1) consecutive words, so a tile
// is one sequential burst; the top declares the port 128 bits wide (max_widen_bitwidth), a block is WPS+1
// beats and starts on a beat (tiles are multiples of 4 words). Each iteration computes its 4 steps at
// II = max(4 * GEMV_II, WPS + 1): the datapath's rate or the port's, whichever is slower. The tiles of a
// tensor stream one after another through the one port; the candidates are built once per GEMV.
//
// Cycle model (DdrTileConfig: the pragmas and the C-simulation counters share it), per tile:
//   max(compute = 4 * BLOCKS * GEMV_II, stream = TILE_WORDS / DDR_WORDS_PER_CYCLE) + GEMV_DEPTH
//   + AXI_READ_LATENCY,
// DDR_STREAM_BYTES_PER_CYCLE = 16: one 128-bit m_axi read port at the core clock. That is a Zynq UltraScale+
// S_AXI_HP port's width, 3.2 GB/s at KV260's 200 MHz and 4.8 GB/s at U250's 300 MHz, below the boards'
// 19.2 GB/s DDR4 peak, so the port, not the DRAM, bounds the stream (an Alveo port could be 512 bits wide).
//
// C simulation (the emulated board) does not run the DDR_BLOCKS loop for speed: roma_core repacks a DDR tile
// from the ddr_weights buffer once per image (csim_pack_ddr_tile, DdrTileSource) and runs the same packed SIMD
// path as a ROM tile. brom_ddr_gemv runs for a tile that cannot be repacked, and in tb_brom_tile.
#ifndef ROMA_BROM_DDR_H
#define ROMA_BROM_DDR_H

#include <cstdint>

#include "brom_tile.h"
#include "layer_cycles.h"
#include "types.h"

namespace roma {

constexpr uint32_t DDR_MAGIC = 0x52444452u;    // "RDDR" (brom.py DDR_MAGIC)
constexpr uint32_t DDR_VERSION = 1;
constexpr int DDR_HEADER_WORDS = 4;             // magic, version, words, CRC-32
constexpr int DDR_BLOCK_STEPS = 4;              // steps per block: their scale|minimum words are one beat
constexpr int DDR_STREAM_BYTES_PER_CYCLE = 16;  // the ddr_weights m_axi port: 128 bits per core cycle
constexpr int DDR_WORDS_PER_CYCLE = DDR_STREAM_BYTES_PER_CYCLE / 4;

template <int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect>
struct DdrTileConfig {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS, DP> C;
  static constexpr int WPS = C::WPS;
  static constexpr int STEPS = C::PARAMS; // (group, row) steps of a tile
  static constexpr int BLOCKS = (STEPS + DDR_BLOCK_STEPS - 1) / DDR_BLOCK_STEPS;
  static constexpr int BLOCK_WORDS = DDR_BLOCK_STEPS * (WPS + 1);
  static constexpr long long TILE_WORDS = (long long)BLOCKS * BLOCK_WORDS;
  static constexpr int BLOCK_BEATS = (BLOCK_WORDS + DDR_WORDS_PER_CYCLE - 1) / DDR_WORDS_PER_CYCLE;
  static constexpr int BLOCK_II = DDR_BLOCK_STEPS * C::GEMV_II > BLOCK_BEATS ? DDR_BLOCK_STEPS * C::GEMV_II
                                                                             : BLOCK_BEATS;
  static constexpr uint64_t COMPUTE_CYCLES = (uint64_t)BLOCKS * DDR_BLOCK_STEPS * C::GEMV_II;
  static constexpr uint64_t STREAM_CYCLES = (uint64_t)BLOCKS * BLOCK_BEATS; // = TILE_WORDS / words per cycle
  // BLOCKS * BLOCK_II: the block loop runs at the slower of the two
  static constexpr uint64_t TILE_CYCLES = (COMPUTE_CYCLES > STREAM_CYCLES ? COMPUTE_CYCLES : STREAM_CYCLES) +
                                          C::GEMV_DEPTH + timing::AXI_READ_LATENCY;
  // Rows are revisited every ROWS steps, ROWS / 4 block iterations (at least one).
  static constexpr int ACC_DISTANCE = ROWS / DDR_BLOCK_STEPS > 0 ? ROWS / DDR_BLOCK_STEPS : 1;
  // One GEMV of a tensor of `tiles` such tiles: candidates once, then the tiles one after another.
  static void count(Cycles &cyc, int tiles) {
    cyc.candidates += C::CAND_CYCLES;
    cyc.gemv += (uint64_t)tiles * TILE_CYCLES;
  }
};

// All TILES tiles of a DDR-streamed tensor (TILES*ROWS outputs) from `image` (the tensor's first word in
// ddr_weights, an m_axi pointer). dot_probe and xsum_out as brom_gemv_tiles.
template <int TILES, int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect,
          bool PROBE = false>
void brom_ddr_gemv(const act_t xq[COLS], const float a_scale[COLS / GROUP], const rom_word_t *image,
                   float y[TILES * ROWS], acc_t dot_probe[TILES][(COLS / GROUP) * ROWS],
                   acc_t xsum_out[COLS / GROUP], Cycles &cyc) {
  typedef DdrTileConfig<ROWS, COLS, GROUP, BITS, DP> D;
  typedef typename D::C C;
  constexpr int NG = C::NG, QUADS = C::QUADS, WPS = C::WPS, BLOCK_WORDS = D::BLOCK_WORDS;
  constexpr int BLOCK_II = D::BLOCK_II, ACC_DISTANCE = D::ACC_DISTANCE; // used by the pragmas
  (void)BLOCK_II;
  (void)ACC_DISTANCE;

  cand_t cand[NG][QUADS][QUAD_CANDIDATES];
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 2
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 3
  act_t xg[NG][GROUP];
#pragma HLS ARRAY_PARTITION variable = xg type = complete dim = 2
  acc_t xsum[NG];
  float acc[ROWS];
#pragma HLS ARRAY_PARTITION variable = acc type = cyclic factor = DDR_BLOCK_STEPS dim = 1

  brom_candidates<COLS, GROUP, DP>(xq, cand, xg, xsum);

DDR_TILES:
  for (int t = 0; t < TILES; ++t) {
    const rom_word_t *src = image + (long long)t * D::TILE_WORDS;
    int g = 0, r = 0; // the (group, row) of the next step
  DDR_BLOCKS:
    for (int b = 0; b < D::BLOCKS; ++b) {
#pragma HLS PIPELINE II = BLOCK_II
#pragma HLS DEPENDENCE variable = acc type = inter direction = RAW distance = ACC_DISTANCE dependent = true
      rom_word_t w[BLOCK_WORDS];
#pragma HLS ARRAY_PARTITION variable = w type = complete
      for (int k = 0; k < BLOCK_WORDS; ++k) {
#pragma HLS UNROLL
        w[k] = src[(long long)b * BLOCK_WORDS + k]; // consecutive: one burst per tile
      }
      for (int i = 0; i < DDR_BLOCK_STEPS; ++i) {
#pragma HLS UNROLL
        const int step = b * DDR_BLOCK_STEPS + i;
        if (step < D::STEPS) { // the last block's missing steps are padding
          const acc_t dot = brom_step_dot<GROUP, BITS, DP>(&w[i * WPS], cand[g], xg[g]);
          if (PROBE) dot_probe[t][step] = dot;
          const rom_word_t pm = w[DDR_BLOCK_STEPS * WPS + i];
          const float term = brom_term(a_scale[g], (half_bits_t)(pm & 0xffffu), (half_bits_t)(pm >> 16), dot,
                                       xsum[g]);
          const float sum = (g == 0) ? term : acc[r] + term;
          acc[r] = sum;
          if (g == NG - 1) y[t * ROWS + r] = sum;
          if (++r == ROWS) {
            r = 0;
            ++g;
          }
        }
      }
    }
  }
  for (int g = 0; g < NG; ++g) {
#pragma HLS UNROLL
    xsum_out[g] = xsum[g];
  }
#ifndef __SYNTHESIS__
  D::count(cyc, TILES);
#else
  (void)cyc;
#endif
}

#ifndef __SYNTHESIS__
// ---- C simulation only: a DDR tile as the repacker's source (brom_tile.h csim_pack_tile_from) ----
template <int ROWS, int COLS, int GROUP, int BITS>
struct DdrTileSource {
  typedef DdrTileConfig<ROWS, COLS, GROUP, BITS> D;
  const rom_word_t *tile; // the tile's first word in the ddr_weights buffer
  const rom_word_t *step_planes(int step) const {
    return tile + (size_t)(step / DDR_BLOCK_STEPS) * D::BLOCK_WORDS + (size_t)(step % DDR_BLOCK_STEPS) * D::WPS;
  }
  rom_word_t params(int step) const {
    return tile[(size_t)(step / DDR_BLOCK_STEPS) * D::BLOCK_WORDS + DDR_BLOCK_STEPS * D::WPS + step % DDR_BLOCK_STEPS];
  }
  half_bits_t scale(int step) const { return (half_bits_t)(params(step) & 0xffffu); }
  half_bits_t minimum(int step) const { return (half_bits_t)(params(step) >> 16); }
};

template <int ROWS, int COLS, int GROUP, int BITS>
void csim_pack_ddr_tile(const rom_word_t *tile, CsimPackedTile &pk) {
  csim_pack_tile_from<ROWS, COLS, GROUP, BITS>(DdrTileSource<ROWS, COLS, GROUP, BITS>{tile}, pk);
}
#endif // __SYNTHESIS__

} // namespace roma

#endif // ROMA_BROM_DDR_H
