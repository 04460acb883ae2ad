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
// so the blocks of a tile are one sequential burst. The image's unit of alignment is a beat of DDR_BEAT_WORDS = 4
// words (128 bits: tiles, blocks' scale words and the q8 prefix are whole beats); that is a format constant. The
// core's ddr_weights port is WEIGHT_PORT_BITS wide (roma_model.h, the board's weight_port_bits: 64 on a Zynq-7000
// HP port, 128 on a Zynq UltraScale+ S_AXI_HP port, 512 on an Alveo card's AXI port into its DDR bank); the
// kernels take it as PORT_BITS and DdrStream counts their loops at that width: a span of n words starting on a
// beat takes port_cycles(n) cycles (the whole port words it touches). The count assumes the m_axi adapter
// delivers a port word per cycle on a tile's burst; Vitis widens a 32-bit pointer's bursts only where it can
// prove the alignment (m_axi_alignment_byte_size), and the image aligns tiles to a beat (16 bytes), so the
// 512-bit rate is to be confirmed by the synthesis report's port widening (not run here).
//
// The block loop (DdrStream::block_ii). BLOCK_STEPS datapaths are unrolled in its body (brom_step_dot per step):
// - lanes (every tile row count of the engine a multiple of BLOCK_STEPS, E::ROW_ALIGN): a block is rows
//   BLOCK_STEPS*q .. BLOCK_STEPS*q + BLOCK_STEPS-1 of one group, so lane i always reads and writes bank i of acc
//   and ex (both partitioned cyclic BLOCK_STEPS) and all lanes read the same group's candidates, activations and
//   a_scale; a row's accumulator comes back every rows / BLOCK_STEPS iterations (the DEPENDENCE distance).
//   II = max(port_cycles(BLOCK_WORDS), timing::acc_ii(rows / BLOCK_STEPS)). y has one write port: at II <
//   BLOCK_STEPS ("y after") a round's outputs are written from its accumulators, a row a cycle, while the next
//   round streams (acc holds two sets, the rounds alternate), and the last round's after the rounds (DDR_Y); else
//   in the last group.
// - serial (a row count that is not a multiple: blocks straddle groups and rows, a lane's bank is not fixed):
//   the steps one after another, II = max(BLOCK_STEPS * GEMV_II, port_cycles(BLOCK_WORDS)).
// q8 first reads its exponent prefix, one beat (8 rows) per iteration: ex's BLOCK_STEPS banks take 8 rows a cycle
// (a wider port does not help), port_cycles(4) cycles per beat. The tiles of a tensor stream in rounds through
// the build's WEIGHT_PORTS ports (roma_model.h; the board's weight_ports), tile t0 + p through port p, each port
// reading its own copy of the image (Zynq: the one DDR through several HP ports; Alveo: a bank per port); the
// candidates are built once per GEMV (per token of a block: token lanes as brom_gemv_tiles_rt's, each block's words
// feeding every lane) and broadcast to the ports' lanes. A round's PORTS outputs of a row are
// consecutive in y (tile t holds rows t, t + TILES, ...), so y's buffers, partitioned cyclic by at least PORTS,
// take them in one cycle.
//
// Cycle model (DdrStream: the pragmas and the C-simulation counters share it), per round of tiles:
//   PREFIX_CYCLES (q8: PREFIX_WORDS / 4 * port_cycles(4) + AXI_READ_LATENCY, its own burst; fp16: 0)
//   + BLOCKS * block_ii + GEMV_DEPTH + AXI_READ_LATENCY (y after: max(BLOCKS, rows) iterations in the rounds
//   after the first, and rows + RAM_LATENCY once, for the last round's outputs).
// On a KV260 (128 bits at 200 MHz, 3.2 GB/s) a 2-bit q8 block of 36 words takes 9 cycles (8 steps: the port
// bounds it); on a U250 (512 bits at 300 MHz, 19.2 GB/s, its DDR bank's peak) 3 cycles.
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
constexpr int DDR_BEAT_WORDS = 4;               // the image's alignment: tiles and scale words are whole beats

// The image's constants for one GEMV datapath (group, bits, datapath, scale format, the candidate stage's CQ) and
// its formulas for a tile of `rows` rows and `cols` columns, evaluated at run time by a GEMV engine that serves
// tensors of several shapes (roma_core.cpp) and at compile time by DdrTileConfig. Nothing here depends on the
// port's width (DdrStream).
template <int GROUP, int BITS, Datapath DP, ScaleFormat SF, int CQ = ACT_LANES / QUAD>
struct DdrStepConfig {
  typedef BromStepConfig<GROUP, BITS, DP, SF, CQ> S;
  static constexpr bool Q8 = SF == ScaleFormat::Q8;
  static constexpr int WPS = S::WPS;
  static constexpr int BLOCK_STEPS = Q8 ? DDR_Q8_BLOCK_STEPS : DDR_BLOCK_STEPS;
  static constexpr int PARAM_WORDS = DDR_BEAT_WORDS; // a block's scale entries: one beat
  static constexpr int BLOCK_WORDS = BLOCK_STEPS * WPS + PARAM_WORDS;
  // Whether an engine whose tile row counts are all multiples of row_align runs its steps in lanes (see above).
  static constexpr bool lanes(int row_align) { return row_align % BLOCK_STEPS == 0; }
  // Rows are revisited every `rows` steps, rows / BLOCK_STEPS block iterations (at least one).
  static constexpr int acc_distance(int rows) { return rows / BLOCK_STEPS > 0 ? rows / BLOCK_STEPS : 1; }
  static constexpr int prefix_words(int rows) { return Q8 ? (rows + 7) / 8 * DDR_BEAT_WORDS : 0; } // 8 rows a beat
  static constexpr int steps(int rows, int cols) { return cols / GROUP * rows; }
  static constexpr int blocks(int rows, int cols) { return (steps(rows, cols) + BLOCK_STEPS - 1) / BLOCK_STEPS; }
  static constexpr long long tile_words(int rows, int cols) {
    return prefix_words(rows) + (long long)blocks(rows, cols) * BLOCK_WORDS;
  }
  // The scale entries of step i of a block whose words are w (q8: ex = the tile's row exponents, r the row).
  static HalfPair scales(const rom_word_t *w, int i, const scale_word_t *ex, int r) {
#pragma HLS INLINE
    const rom_word_t pw = w[BLOCK_STEPS * WPS + i * PARAM_WORDS / BLOCK_STEPS];
    if (Q8) return brom_scales<SF>((scale_word_t)(pw >> (16 * (i & 1))), ex[r]);
    return brom_scales<SF>((scale_word_t)(pw & 0xffffu), (scale_word_t)(pw >> 16));
  }
};

// The stream of datapath D's tiles through a PORT_BITS-wide ddr_weights port: the loops' IIs (the pragmas) and
// their cycles (the counters), for an engine whose shortest tile has ii_rows rows and whose tile row counts are
// all multiples of row_align.
template <class D, int PORT_BITS>
struct DdrStream {
  static_assert(PORT_BITS == 64 || PORT_BITS == 128 || PORT_BITS == 256 || PORT_BITS == 512,
                "WEIGHT_PORT_BITS is an AXI data width: 64, 128, 256 or 512");
  typedef typename D::S S;
  static constexpr int PORT_WORDS = PORT_BITS / 32;
  // Cycles of a span of n words that starts on a beat: the port words it touches at worst (a beat need not
  // start a port word wider than itself).
  static constexpr int port_cycles(int n) {
    return (n + (PORT_WORDS > DDR_BEAT_WORDS ? PORT_WORDS - DDR_BEAT_WORDS : 0) + PORT_WORDS - 1) / PORT_WORDS;
  }
  static constexpr int PREFIX_II = port_cycles(DDR_BEAT_WORDS); // one beat of q8 exponents (8 rows)
  static constexpr int max(int a, int b) { return a > b ? a : b; }
  // the block loop's II: lanes at the port's rate or the accumulators' distance, else the steps one a GEMV_II
  static constexpr int block_ii(int ii_rows, int row_align) {
    return D::lanes(row_align) ? max(port_cycles(D::BLOCK_WORDS), timing::acc_ii(D::acc_distance(ii_rows)))
                               : max(D::BLOCK_STEPS * S::gemv_ii(ii_rows), port_cycles(D::BLOCK_WORDS));
  }
  // y (one write port) takes fewer than BLOCK_STEPS outputs per block iteration: a round's outputs are written from
  // its accumulators during the next round's block loop, a row per iteration, and the last round's after it (DDR_Y)
  static constexpr bool y_after(int ii_rows, int row_align) { return block_ii(ii_rows, row_align) < D::BLOCK_STEPS; }
  static constexpr uint64_t prefix_cycles(int rows) {
    return D::Q8 ? (uint64_t)(D::prefix_words(rows) / DDR_BEAT_WORDS) * PREFIX_II + timing::AXI_READ_LATENCY : 0;
  }
  // a round's block loop: its blocks, or (y after, not the first round) the previous round's rows if more
  static constexpr uint64_t round_cycles(int rows, int cols, int ii_rows, int row_align, bool first) {
    const int blocks = D::blocks(rows, cols);
    const int iterations = first || !y_after(ii_rows, row_align) || blocks >= rows ? blocks : rows;
    return prefix_cycles(rows) + (uint64_t)iterations * block_ii(ii_rows, row_align) + S::GEMV_DEPTH +
           timing::AXI_READ_LATENCY;
  }
  static constexpr uint64_t y_cycles(int rows, int ii_rows, int row_align) {
    return y_after(ii_rows, row_align) ? (uint64_t)rows + timing::RAM_LATENCY : 0;
  }
  // Tiles of a tensor of `tiles` through `ports` weight ports: rounds of one tile per port.
  static constexpr int rounds(int tiles, int ports) { return (tiles + ports - 1) / ports; }
  // One GEMV of a tensor whose tiles take `rounds` rounds, for a block of n tokens: the candidates of each token,
  // then the rounds one after another and the last round's outputs.
  static void count(Cycles &cyc, int n, int rounds, int rows, int cols, int ii_rows, int row_align) {
    cyc.candidates += (uint64_t)n * S::cand_cycles(cols);
    cyc.gemv += round_cycles(rows, cols, ii_rows, row_align, true) +
                (uint64_t)(rounds - 1) * round_cycles(rows, cols, ii_rows, row_align, false) +
                y_cycles(rows, ii_rows, row_align);
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
  static constexpr int BLOCKS = B::blocks(ROWS, COLS);
  static constexpr long long TILE_WORDS = B::tile_words(ROWS, COLS);
};

// Weight port p's pointer (p a constant in an unrolled lane, so the select folds away and each lane reads its own
// m_axi bundle).
inline const rom_word_t *ddr_port(int p, const rom_word_t *image0, const rom_word_t *image1,
                                  const rom_word_t *image2, const rom_word_t *image3) {
#pragma HLS INLINE
  return p == 0 ? image0 : p == 1 ? image1 : p == 2 ? image2 : image3;
}

// All TILES tiles of a DDR-streamed tensor of `rows` rows per tile and `cols` columns (run time, within engine E's
// bounds: MAX_ROWS, MAX_COLS, MIN_ROWS, ROW_ALIGN (every tile row count a multiple of it), GROUP, BITS, DP, SF, CQ)
// through PORTS weight ports, PORT_BITS wide each: port p's image is image0..image3 (each the tensor's first word in
// that port's copy of the DDR image; the ports past PORTS are not read). Tiles t0 .. t0 + PORTS - 1 stream at once,
// tile t0 + p through port p, each into its own accumulators, so a round of PORTS tiles takes one tile's cycles.
// Four pointers, not an array: Vitis HLS gives each top-level pointer its own m_axi bundle only as an argument of
// its own. Token lanes as brom_gemv_tiles_rt: n <= TOKENS tokens (xq[c], a_scale[c] -> y_c), each block's words,
// read once, feed every lane's datapaths, so a block of tokens streams the tensor once. dot_probe and xsum_out as
// brom_gemv_tiles (token 0's).
template <class E, int TILES, int PORT_BITS, int PORTS, bool PROBE = false, int TOKENS = 1>
void brom_ddr_gemv_rt(int n, int rows, int cols, const act_t xq[TOKENS][E::MAX_COLS],
                      const float a_scale[TOKENS][E::MAX_COLS / E::GROUP], const rom_word_t *image0,
                      const rom_word_t *image1, const rom_word_t *image2, const rom_word_t *image3, float *y0,
                      float *y1, float *y2, float *y3, acc_t dot_probe[TILES][(E::MAX_COLS / E::GROUP) * E::MAX_ROWS],
                      acc_t xsum_out[E::MAX_COLS / E::GROUP], Cycles &cyc) {
  static_assert(PORTS >= 1 && PORTS <= 4, "one to four weight ports");
  static_assert(TOKENS >= 1 && TOKENS <= MAX_TOKEN_LANES, "one to MAX_TOKEN_LANES token lanes");
  typedef DdrStepConfig<E::GROUP, E::BITS, E::DP, E::SF, E::CQ> D;
  typedef DdrStream<D, PORT_BITS> P;
  typedef typename D::S S;
  constexpr int GROUP = E::GROUP, NG_MAX = E::MAX_COLS / GROUP, QUADS = S::QUADS, WPS = S::WPS;
  constexpr int BLOCK_WORDS = D::BLOCK_WORDS, BLOCK_STEPS = D::BLOCK_STEPS, EX_ROWS = D::Q8 ? E::MAX_ROWS : 1;
  constexpr bool LANES = D::lanes(E::ROW_ALIGN), Y_AFTER = P::y_after(E::MIN_ROWS, E::ROW_ALIGN);
  constexpr int ROUNDS = P::rounds(TILES, PORTS);
  // the pragmas'
  constexpr int BLOCK_II = P::block_ii(E::MIN_ROWS, E::ROW_ALIGN), ACC_DISTANCE = D::acc_distance(E::MIN_ROWS);
  constexpr int PREFIX_II = P::PREFIX_II, MAX_ROWS = E::MAX_ROWS;
  constexpr int MAX_BLOCKS = D::blocks(E::MAX_ROWS, E::MAX_COLS), MAX_PREFIX_BEATS =
      D::prefix_words(E::MAX_ROWS) / DDR_BEAT_WORDS + 1;
  (void)BLOCK_II;
  (void)ACC_DISTANCE;
  (void)PREFIX_II;
  (void)MAX_ROWS;
  (void)MAX_BLOCKS;
  (void)MAX_PREFIX_BEATS;

#pragma HLS ARRAY_PARTITION variable = a_scale type = complete dim = 1
  cand_t cand[TOKENS][NG_MAX][QUADS][QUAD_CANDIDATES];
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 3
#pragma HLS ARRAY_PARTITION variable = cand type = complete dim = 4
  act_t xg[TOKENS][NG_MAX][GROUP];
#pragma HLS ARRAY_PARTITION variable = xg type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = xg type = complete dim = 3
  acc_t xsum[TOKENS][NG_MAX];
#pragma HLS ARRAY_PARTITION variable = xsum type = complete dim = 1
  // a token lane's and port's tile's accumulators; y after: two sets, the round's and the previous round's being
  // written to y
  constexpr int ACC_SETS = Y_AFTER ? 2 : 1;
  static_assert(!Y_AFTER || BLOCK_II >= 2, "y after: a bank of acc takes a lane's read and write and y's read");
  float acc[TOKENS][ACC_SETS][PORTS][E::MAX_ROWS];
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 2
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 3
#pragma HLS ARRAY_PARTITION variable = acc type = cyclic factor = BLOCK_STEPS dim = 4
  scale_word_t ex[PORTS][EX_ROWS]; // q8: a port's tile's row exponents
#pragma HLS ARRAY_PARTITION variable = ex type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = ex type = cyclic factor = BLOCK_STEPS dim = 2

DDR_TOKENS: // one candidate stage, the block's tokens one after another
  for (int c = 0; c < n; ++c) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = TOKENS
    brom_candidates<E::MAX_COLS, GROUP, E::DP, E::CQ>(cols, xq[c], cand[c], xg[c], xsum[c]);
  }

  const int ng = cols / GROUP, steps = D::steps(rows, cols), blocks = D::blocks(rows, cols);
  const int prefix_beats = D::prefix_words(rows) / DDR_BEAT_WORDS, row_blocks = rows / BLOCK_STEPS;
  const long long tile_words = D::tile_words(rows, cols);
DDR_ROUNDS:
  for (int t0 = 0; t0 < ROUNDS * PORTS; t0 += PORTS) {
    const int set = Y_AFTER ? (t0 / PORTS) & 1 : 0, prev = ACC_SETS - 1 - set; // y after: the two sets alternate
    const int y_rows = Y_AFTER && t0 > 0 ? rows : 0; // the previous round's outputs, written in this block loop
  DDR_EXPONENTS: // q8 only (no prefix for fp16): one beat per port, 8 rows (one per bank of ex), per iteration
    for (int k = 0; k < prefix_beats; ++k) {
#pragma HLS PIPELINE II = PREFIX_II
#pragma HLS LOOP_TRIPCOUNT min = 0 max = MAX_PREFIX_BEATS
      for (int p = 0; p < PORTS; ++p) {
#pragma HLS UNROLL
        for (int i = 0; i < 2 * DDR_BEAT_WORDS; ++i) {
#pragma HLS UNROLL
          const int row = 2 * DDR_BEAT_WORDS * k + i;
          if (t0 + p < TILES) {
            const rom_word_t w = ddr_port(p, image0, image1, image2, image3)[(long long)(t0 + p) * tile_words +
                                                                             DDR_BEAT_WORDS * k + i / 2];
            if (row < EX_ROWS && row < rows) ex[p][row] = (scale_word_t)(w >> (16 * (i & 1)));
          }
        }
      }
    }
    // the (group, row) of the next step; lanes: the block's group and first row BLOCK_STEPS * q
    int g = 0, r = 0, q = 0;
  DDR_BLOCKS:
    for (int b = 0; b < (blocks > y_rows ? blocks : y_rows); ++b) {
#pragma HLS PIPELINE II = BLOCK_II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_BLOCKS
#pragma HLS DEPENDENCE variable = acc type = inter direction = RAW distance = ACC_DISTANCE dependent = true
      // the block's steps' (group, row), the same for every port's tile; lanes: lane i owns bank i of acc and ex
      int grp_of[BLOCK_STEPS], row_of[BLOCK_STEPS];
#pragma HLS ARRAY_PARTITION variable = grp_of type = complete
#pragma HLS ARRAY_PARTITION variable = row_of type = complete
      for (int i = 0; i < BLOCK_STEPS; ++i) {
#pragma HLS UNROLL
        grp_of[i] = g;
        row_of[i] = LANES ? BLOCK_STEPS * q + i : r;
        if (!LANES && b * BLOCK_STEPS + i < steps && ++r == rows) {
          r = 0;
          ++g;
        }
      }
      if (LANES && ++q == row_blocks) {
        q = 0;
        ++g;
      }
      for (int c = 0; c < TOKENS; ++c) {
#pragma HLS UNROLL
        for (int p = 0; p < PORTS; ++p) {
#pragma HLS UNROLL
          // y after: row b of the previous round's tiles, PORTS consecutive outputs (tile t holds rows t, t + TILES..)
          if (c < n && b < y_rows) token_out(c, y0, y1, y2, y3)[b * TILES + t0 - PORTS + p] = acc[c][prev][p][b];
        }
      }
      for (int p = 0; p < PORTS; ++p) {
#pragma HLS UNROLL
        const int t = t0 + p;
        if (t < TILES && b < blocks) { // the last round's missing tiles (TILES not a multiple of PORTS) idle
          rom_word_t w[BLOCK_WORDS];
#pragma HLS ARRAY_PARTITION variable = w type = complete
          for (int k = 0; k < BLOCK_WORDS; ++k) {
#pragma HLS UNROLL
            // consecutive: a burst per tile (tile t0 + p of port p)
            w[k] = ddr_port(p, image0, image1, image2, image3)[(long long)(t0 + p) * tile_words +
                                                               D::prefix_words(rows) + (long long)b * BLOCK_WORDS + k];
          }
          for (int i = 0; i < BLOCK_STEPS; ++i) {
#pragma HLS UNROLL
            const int step = b * BLOCK_STEPS + i, grp = grp_of[i], row = row_of[i];
            if (step < steps) { // the last block's missing steps are padding (serial only)
              const HalfPair dm = D::scales(w, i, ex[p], D::Q8 ? row : 0);
              for (int c = 0; c < TOKENS; ++c) {
#pragma HLS UNROLL
                if (c < n) {
                  const acc_t dot = brom_step_dot<GROUP, E::BITS, E::DP>(&w[i * WPS], cand[c][grp], xg[c][grp]);
                  if (PROBE && c == 0) dot_probe[t][step] = dot;
                  const float term = brom_term(a_scale[c][grp], dm.d, dm.m, dot, xsum[c][grp]);
                  const float sum = (grp == 0) ? term : acc[c][set][p][row] + term;
                  acc[c][set][p][row] = sum;
                  // tile t holds rows t, t + TILES, ...
                  if (!Y_AFTER && grp == ng - 1) token_out(c, y0, y1, y2, y3)[row * TILES + t] = sum;
                }
              }
            }
          }
        }
      }
    }
  }
DDR_Y: // the lanes outrun y's write port: the last round's outputs from its accumulators, the ports' PORTS
       // consecutive outputs of a row per cycle (the earlier rounds' went out during the next round's block loop)
  for (int k = 0; k < (Y_AFTER ? rows : 0); ++k) {
#pragma HLS PIPELINE II = 1
#pragma HLS LOOP_TRIPCOUNT min = 0 max = MAX_ROWS
    for (int c = 0; c < TOKENS; ++c) {
#pragma HLS UNROLL
      for (int p = 0; p < PORTS; ++p) {
#pragma HLS UNROLL
        const int t = (ROUNDS - 1) * PORTS + p;
        if (c < n && t < TILES)
          token_out(c, y0, y1, y2, y3)[k * TILES + t] = acc[c][(ROUNDS - 1) & (ACC_SETS - 1)][p][k];
      }
    }
  }
  for (int k = 0; k < NG_MAX; ++k) {
#pragma HLS UNROLL
    if (k < ng) xsum_out[k] = xsum[0][k];
  }
  P::count(cyc, n, ROUNDS, rows, cols, E::MIN_ROWS, E::ROW_ALIGN);
}

// A fixed tile shape as an engine: its one row count is its alignment.
template <class C>
struct DdrFixedShape : C {
  static constexpr int ROW_ALIGN = C::MAX_ROWS;
};

// All TILES tiles of one DDR-streamed tensor (a fixed shape) through PORTS PORT_BITS-wide ports reading one image.
template <int PORT_BITS, int TILES, int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect,
          bool PROBE = false, ScaleFormat SF = ScaleFormat::Fp16, int PORTS = 1>
void brom_ddr_gemv(const act_t xq[COLS], const float a_scale[COLS / GROUP], const rom_word_t *image,
                   float y[TILES * ROWS], acc_t dot_probe[TILES][(COLS / GROUP) * ROWS],
                   acc_t xsum_out[COLS / GROUP], Cycles &cyc) {
#pragma HLS INLINE
  brom_ddr_gemv_rt<DdrFixedShape<BromTileConfig<ROWS, COLS, GROUP, BITS, DP, SF>>, TILES, PORT_BITS, PORTS, PROBE>(
      1, ROWS, COLS, reinterpret_cast<const act_t(*)[COLS]>(xq),
      reinterpret_cast<const float(*)[COLS / GROUP]>(a_scale), image, image, image, image, y, y, y, y, dot_probe,
      xsum_out, cyc);
}

} // namespace roma

#endif // ROMA_BROM_DDR_H
