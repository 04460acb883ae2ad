// ROMA-FPGA DDR-streamed B-ROM tiles: the GEMV of a tensor the placement plan puts in DDR ("DDR-stream"),
// reading its tile words through the core's `ddr_weights` m_axi port instead of ROM banks.
//
// Image (written only by host/roma_runtime/artifact/ddr_image.py; its module docstring has the layout):
//   4 header words [DDR_MAGIC, DDR_VERSION, words, CRC-32 of the rest], zero words up to DDR_ALIGN_WORDS, then the
//   DDR tensors at the word offsets roma_model.h gives (DDR_*). A tensor is its TILES tiles one after another; a tile
//   is its B-ROM tile's steps in the ROM's step order (step = g*ROWS + r):
//     q8: first PREFIX_WORDS words holding the tile's ROWS row exponents, two per word (row 2i low half, 2i+1 high),
//     padded to whole chunks at any port width (PREFIX_ALIGN words: 16, or a step's words when wider);
//     then blocks of DDR_BLOCK_STEPS = 32 steps, each PARAM_WORDS words of the steps' scale entries (q8: 16 words,
//     params(32b+2k) | params(32b+2k+1) << 16, sd | sm << 8 each; fp16: 32 words, scale | minimum << 16) followed
//     by the 32 steps' planes, STEP_WORDS words each (the step's WPS plane words in the ROM's (plane, lane) order,
//     zero-padded to a power of two: 3-bit steps of 3, 6, 12 words take 4, 8, 16).
//   Everything (tensors, tiles, the prefix and blocks) is whole 512-bit words of DDR_ALIGN_WORDS = 16 words, the
//   widest port word, so a block loop at any port width reads whole port words. The same codes and scale entries as
//   the on-chip ROM; a block's scale entries sit right before their planes, so one sequential pass feeds the
//   datapath with PARAM_WORDS registers (the scales and minimums of one tile of SmolLM2's 49152-row lm head would
//   take 1.7 MB); q8's per-row exponents (2 bytes a row) are read into a ROWS-entry array first.
//
// Datapath: the same integer dot per step (brom_step_dot, LutSelect or DspMac) and the same fp32 sequence per
// row (brom_term; acc = term_0 + term_1 + ...) as brom_tile_gemv, so y is bit-identical to the same tensor
// in ROM (tb_brom_tile checks it on every case, both datapaths).
//
// Streaming (DdrStream): the core's ddr_weights port is WEIGHT_PORT_BITS wide (roma_model.h, the board's
// weight_port_bits: 64 on a Zynq-7000 HP port, 128 on a Zynq UltraScale+ S_AXI_HP port, 512 on an Alveo card's AXI
// port into its DDR bank); the kernels take it as PORT_BITS. The block loop DDR_CHUNKS reads one chunk per
// iteration: CHUNK_WORDS = a port word, or a step's words when wider, at CHUNK_CYCLES = CHUNK_WORDS / PORT_WORDS
// port cycles; a tile's chunks are one sequential burst. A block is PARAM_CHUNKS chunks of scale entries (kept in
// registers, prm) and then plane chunks of LANES = CHUNK_WORDS / STEP_WORDS steps each: on a U250 a q8 2-bit G64
// block of 32 steps is 9 port words (1 of scale entries, 8 of 4 steps), where 8-step blocks of planes and then
// their 4 scale words (36 words) took 3 port words of 16 per 8 steps. The count assumes the m_axi adapter delivers
// a port word per cycle on a tile's burst; Vitis widens a 32-bit pointer's bursts only where it can prove the
// alignment (m_axi_alignment_byte_size), and the image aligns every chunk to 64 bytes, so the rate is to be
// confirmed by the synthesis report's port widening (not run here).
//
// The chunk loop (DdrStream::chunk_ii). LANES datapaths are unrolled in its body (brom_step_dot per step):
// - lanes (every tile row count of the engine a multiple of LANES, E::ROW_ALIGN): a plane chunk's steps are rows
//   LANES*q .. LANES*q + LANES-1 of one group, so lane i always reads and writes bank i of acc (partitioned cyclic
//   LANES), the chunk's rows' exponents are in banks of their own (ex, cyclic EX_BANKS, a multiple of LANES), and
//   all lanes read the same group's candidates, activations and a_scale; a row's accumulator comes back at least
//   rows / LANES iterations later (the DEPENDENCE distance).
//   II = max(CHUNK_CYCLES, timing::acc_ii(rows / LANES)). y has one write port: at II < LANES ("y after") a
//   round's outputs are written from its accumulators, a row a cycle, while the next round streams (acc holds two
//   sets, the rounds alternate), and the last round's after the rounds (DDR_Y); else in the last group.
// - serial (a row count that is not a multiple: a chunk's steps may straddle groups and rows, a lane's bank is not
//   fixed): the steps one after another, II = max(LANES * GEMV_II, CHUNK_CYCLES).
// q8: the tile's exponent prefix leads the same loop and burst, a chunk per iteration like the blocks (2 *
// CHUNK_WORDS rows, one per bank of ex, EX_BANKS); a row's exponent is read PARAM_CHUNKS + 1 iterations after its
// chunk at the least (the DEPENDENCE distance): the prefix's last chunk, then the first block's scale entries. The
// prefix used to be a loop and a burst of its own, a beat of 8 rows a cycle: on a U250 (512-bit ports) a quarter of
// a port word, and a second AXI read latency per round. The tiles of a tensor stream in rounds through the build's
// WEIGHT_PORTS ports (roma_model.h; the board's weight_ports), tile t0 + p through port p, each port reading its
// own copy of the image (Zynq: the one DDR through several HP ports; Alveo: a bank per port); the candidates are
// built once per GEMV (per token of a block: token lanes as brom_gemv_tiles_rt's, each chunk's words feeding every
// lane) and broadcast to the ports' lanes. A round's PORTS outputs of a row are consecutive in y (tile t holds rows
// t, t + TILES, ...), so y's buffers, partitioned cyclic by at least PORTS, take them in one cycle.
//
// Cycle model (DdrStream: the pragmas and the C-simulation counters share it), per round of tiles:
//   chunks * chunk_ii + GEMV_DEPTH + AXI_READ_LATENCY, the chunks those of the q8 prefix (prefix_chunks: ROWS / (2 *
//   CHUNK_WORDS), padded), of the whole blocks and of the last block's steps (y after: max(chunks, rows)
//   iterations in the rounds after the first, and rows / y_rows + RAM_LATENCY once, for the last round's outputs:
//   y_rows rows an iteration of y_ii cycles, 16 in two cycles for a U250 layer's 4 tiles into the layer buffers' 64
//   banks, 2 in one for its 24-tile head into g_logits' 16).
// A 2-bit q8 block of 32 steps is 144 words: on a KV260 (128 bits at 200 MHz) 36 cycles, one step or 8 scale
// entries a cycle; on a U250 (512 bits at 300 MHz, its DDR bank's peak) 9 cycles.
//
// C simulation (the emulated board) does not run the DDR_CHUNKS loop for speed: roma_core repacks a DDR tile
// from the ddr_weights buffer once per image (csim_pack_ddr_tile, DdrTileSource: csim/brom_ddr.h) and runs the same
// packed SIMD path as a ROM tile. brom_ddr_gemv_rt runs for a tile that cannot be repacked, and in tb_brom_tile.
#ifndef ROMA_BROM_DDR_H
#define ROMA_BROM_DDR_H

#include <cstdint>

#include "brom_tile.h"
#include "layer_cycles.h"
#include "types.h"

namespace roma {

constexpr uint32_t DDR_MAGIC = 0x52444452u;    // "RDDR"; artifact/ddr_image.py reads these
constexpr uint32_t DDR_VERSION = 3;             // 3: the q8 prefix in whole PREFIX_ALIGN words
constexpr int DDR_HEADER_WORDS = 4;             // magic, version, words, CRC-32
constexpr int DDR_ALIGN_WORDS = 16;             // 512 bits: tensors, tiles, prefixes and blocks are whole such words
constexpr int DDR_BLOCK_STEPS = 32;             // steps per block: their q8 scale entries fill one aligned word

constexpr int ddr_pow2_at_least(int n) { return n <= 1 ? 1 : 2 * ddr_pow2_at_least((n + 1) / 2); }
constexpr int ddr_max(int a, int b) { return a > b ? a : b; }
constexpr int ddr_gcd(int a, int b) { return b == 0 ? a : ddr_gcd(b, a % b); }

// The image's constants for one GEMV datapath (group, bits, datapath, scale format, the candidate stage's CQ) and
// its formulas for a tile of `rows` rows and `cols` columns, evaluated at run time by a GEMV engine that serves
// tensors of several shapes (roma_core.cpp) and at compile time by DdrTileConfig. Nothing here depends on the
// port's width (DdrStream).
template <int GROUP, int BITS, Datapath DP, ScaleFormat SF, int CQ = ACT_LANES / QUAD>
struct DdrStepConfig {
  typedef BromStepConfig<GROUP, BITS, DP, SF, CQ> S;
  static constexpr bool Q8 = SF == ScaleFormat::Q8;
  static constexpr int WPS = S::WPS;
  static constexpr int STEP_WORDS = ddr_pow2_at_least(WPS); // a step's planes in the image, zero-padded
  static constexpr int BLOCK_STEPS = DDR_BLOCK_STEPS;
  // a block's scale entries (q8 two a word, fp16 one), padded to a step's words when those are wider
  static constexpr int PARAM_WORDS = ddr_max(Q8 ? BLOCK_STEPS / 2 : BLOCK_STEPS, STEP_WORDS);
  static constexpr int BLOCK_WORDS = PARAM_WORDS + BLOCK_STEPS * STEP_WORDS;
  static_assert(BLOCK_WORDS % DDR_ALIGN_WORDS == 0 && PARAM_WORDS % DDR_ALIGN_WORDS == 0, "blocks of whole words");
  // q8: the row exponents, two a word, in whole PREFIX_ALIGN words: whole chunks of the stream at any port width (a
  // chunk is a port word of at most DDR_ALIGN_WORDS, or a step's words), so they lead the tile's one burst
  static constexpr int PREFIX_ALIGN = ddr_max(DDR_ALIGN_WORDS, STEP_WORDS);
  static constexpr int prefix_words(int rows) {
    return Q8 ? (rows + 2 * PREFIX_ALIGN - 1) / (2 * PREFIX_ALIGN) * PREFIX_ALIGN : 0;
  }
  static constexpr int steps(int rows, int cols) { return cols / GROUP * rows; }
  static constexpr int blocks(int rows, int cols) { return (steps(rows, cols) + BLOCK_STEPS - 1) / BLOCK_STEPS; }
  static constexpr long long tile_words(int rows, int cols) {
    return prefix_words(rows) + (long long)blocks(rows, cols) * BLOCK_WORDS;
  }
  // the first word of step `step`'s block, after a tile's prefix; step i's planes in a block whose first word is at 0
  static constexpr long long block_offset(int step) { return (long long)(step / BLOCK_STEPS) * BLOCK_WORDS; }
  static constexpr int planes_offset(int i) { return PARAM_WORDS + i * STEP_WORDS; }
  // The scale entries of step i of a block whose scale words are prm (q8: ex = the tile's row exponents, r the row).
  static HalfPair scales(const rom_word_t *prm, int i, const scale_word_t *ex, int r) {
#pragma HLS INLINE
    const rom_word_t pw = prm[Q8 ? i / 2 : i];
    if (Q8) return brom_scales<SF>((scale_word_t)(pw >> (16 * (i & 1))), ex[r]);
    return brom_scales<SF>((scale_word_t)(pw & 0xffffu), (scale_word_t)(pw >> 16));
  }
};

// The stream of datapath D's tiles through a PORT_BITS-wide ddr_weights port: its chunks, the loops' IIs (the
// pragmas) and their cycles (the counters), for an engine whose shortest tile has ii_rows rows and whose tile row
// counts are all multiples of row_align.
template <class D, int PORT_BITS>
struct DdrStream {
  static_assert(PORT_BITS == 64 || PORT_BITS == 128 || PORT_BITS == 256 || PORT_BITS == 512,
                "WEIGHT_PORT_BITS is an AXI data width: 64, 128, 256 or 512");
  typedef typename D::S S;
  static constexpr int PORT_WORDS = PORT_BITS / 32;
  // Cycles of a span of n words that starts on a port word (every chunk does).
  static constexpr int port_cycles(int n) { return (n + PORT_WORDS - 1) / PORT_WORDS; }
  // one iteration's words: a port word, or a step's words when those are wider
  static constexpr int CHUNK_WORDS = ddr_max(PORT_WORDS, D::STEP_WORDS);
  static constexpr int CHUNK_CYCLES = CHUNK_WORDS / PORT_WORDS;
  static constexpr int LANES = CHUNK_WORDS / D::STEP_WORDS;  // steps of a plane chunk
  static constexpr int PARAM_CHUNKS = D::PARAM_WORDS / CHUNK_WORDS;
  static constexpr int BLOCK_CHUNKS = D::BLOCK_WORDS / CHUNK_WORDS;
  static_assert(D::PARAM_WORDS % CHUNK_WORDS == 0 && D::PREFIX_ALIGN % CHUNK_WORDS == 0,
                "whole chunks of scale entries and exponents");
  // q8: a prefix chunk's rows (two a word), each into a bank of its own of the exponents; a plane chunk's lanes read
  // LANES <= CHUNK_WORDS consecutive rows of them
  static constexpr int EX_BANKS = 2 * CHUNK_WORDS;
  static constexpr int prefix_chunks(int rows) { return D::prefix_words(rows) / CHUNK_WORDS; }
  // Whether an engine whose tile row counts are all multiples of row_align runs its chunks in lanes (see above).
  static constexpr bool lanes(int row_align) { return row_align % LANES == 0; }
  // A row's accumulator comes back after rows / LANES plane chunks at least (one at least).
  static constexpr int acc_distance(int rows) { return rows / LANES > 0 ? rows / LANES : 1; }
  // the chunk loop's II: lanes at the port's rate or the accumulators' distance, else the steps one a GEMV_II
  static constexpr int chunk_ii(int ii_rows, int row_align) {
    return lanes(row_align) ? ddr_max(CHUNK_CYCLES, timing::acc_ii(acc_distance(ii_rows)))
                            : ddr_max(LANES * S::gemv_ii(ii_rows), CHUNK_CYCLES);
  }
  // y (one write port) takes fewer than LANES outputs per iteration: a round's outputs are written from its
  // accumulators during the next round's chunk loop, a row per iteration, and the last round's after it (DDR_Y)
  static constexpr bool y_after(int ii_rows, int row_align) { return chunk_ii(ii_rows, row_align) < LANES; }
  // A tile's chunks: whole blocks, then the last block's scale entries and the chunks that hold its steps (its
  // padding steps are not read).
  static constexpr long long chunks(int rows, int cols) {
    return (long long)(D::blocks(rows, cols) - 1) * BLOCK_CHUNKS + PARAM_CHUNKS +
           (D::steps(rows, cols) - (D::blocks(rows, cols) - 1) * D::BLOCK_STEPS + LANES - 1) / LANES;
  }
  // a round's chunk loop: its prefix's and blocks' chunks (one burst), or (y after, not the first round) the
  // previous round's rows if more
  static constexpr uint64_t round_cycles(int rows, int cols, int ii_rows, int row_align, bool first) {
    const long long chunks = prefix_chunks(rows) + DdrStream::chunks(rows, cols);
    const long long iterations = first || !y_after(ii_rows, row_align) || chunks >= rows ? chunks : rows;
    return (uint64_t)iterations * chunk_ii(ii_rows, row_align) + S::GEMV_DEPTH + timing::AXI_READ_LATENCY;
  }
  // DDR_Y's rows an iteration: Y_ROWS rows of the PORTS tiles of a round go to y (partitioned cyclic y_banks) in one
  // iteration when each of their Y_ROWS * PORTS outputs has a bank of its own fixed by its unrolled lane (row i of the
  // iteration, port p: y[(k * Y_ROWS + i) * tiles + t0 + p], so Y_ROWS * tiles is a multiple of y_banks, and the ports
  // fit between two rows' banks) and fin's banks (cyclic LANES, two ports each) give them within two cycles; else a
  // row an iteration. An iteration takes y_ii cycles: one per 2 * LANES rows fin gives a cycle (two where y has twice
  // the banks of a PE a row, the on-chip engines' decode row split: 16 rows of a U250 layer's 4 tiles into 64 banks)
  static constexpr int y_rows(int tiles, int ports, int y_banks) {
    return ports <= ddr_gcd(y_banks, tiles) && y_banks / ddr_gcd(y_banks, tiles) <= 4 * LANES
               ? y_banks / ddr_gcd(y_banks, tiles)
               : 1;
  }
  static constexpr int y_ii(int y_rows) { return (y_rows + 2 * LANES - 1) / (2 * LANES); }
  static constexpr uint64_t y_cycles(int rows, int ii_rows, int row_align, int y_rows) {
    return y_after(ii_rows, row_align)
               ? (uint64_t)(rows + y_rows - 1) / y_rows * y_ii(y_rows) + timing::RAM_LATENCY
               : 0;
  }
  // Tiles of a tensor of `tiles` through `ports` weight ports: rounds of one tile per port.
  static constexpr int rounds(int tiles, int ports) { return (tiles + ports - 1) / ports; }
  // One GEMV of a tensor whose tiles take `rounds` rounds, for a block of tokens: their candidates (a stage per token
  // lane, side by side), then the rounds one after another and the last round's outputs (y_rows of them a cycle).
  static void count(Cycles &cyc, int rounds, int rows, int cols, int ii_rows, int row_align, int y_rows) {
    cyc.candidates += S::cand_cycles(cols);
    cyc.gemv += round_cycles(rows, cols, ii_rows, row_align, true) +
                (uint64_t)(rounds - 1) * round_cycles(rows, cols, ii_rows, row_align, false) +
                y_cycles(rows, ii_rows, row_align, y_rows);
  }
};

// One tensor's fixed tile shape (what the DDR image and the testbenches name).
template <int ROWS, int COLS, int GROUP, int BITS, Datapath DP = Datapath::LutSelect,
          ScaleFormat SF = ScaleFormat::Fp16>
struct DdrTileConfig : DdrStepConfig<GROUP, BITS, DP, SF> {
  typedef DdrStepConfig<GROUP, BITS, DP, SF> B;
  static constexpr int PREFIX_WORDS = B::prefix_words(ROWS);
  static constexpr long long TILE_WORDS = B::tile_words(ROWS, COLS);
};

// Where output row `row` of tile t0 + p goes in y (tile t holds rows t, t + tiles, ...): row * tiles + t0 + p. With
// run-time tiles (a multiple of PORTS, as t0 is) written as a multiple of PORTS plus the port, so that the bank of a
// PORTS-multiple cyclic partition of y is the lane's constant p.
template <bool VAR_TILES, int PORTS>
inline int y_at(int row, int tiles, int t0, int p) {
#pragma HLS INLINE
  return VAR_TILES ? (row * (tiles / PORTS) + t0 / PORTS) * PORTS + p : row * tiles + t0 + p;
}

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
// its own. Token lanes as brom_gemv_tiles_rt: n <= TOKENS tokens (xq[c], a_scale[c] -> y_c), each chunk's words,
// read once, feed every lane's datapaths, so a block of tokens streams the tensor once. dot_probe and xsum_out as
// brom_gemv_tiles (token 0's). Y_BANKS: the cyclic partition of the y buffers (the caller's; DdrStream::y_rows).
// XCOLS, XGROUPS: the codes' and scales' rows, as brom_gemv_banks_rt's. VAR_TILES: the tensor's tiles are tiles_rt, a
// multiple of PORTS and at most TILES, given at run time (an engine that streams the layers' tensors and the lm head,
// whose tiles differ: roma_core.cpp Unit::HEAD_TILES); a round's PORTS outputs of a row then go to y at
// (row * tiles_rt / PORTS + round) * PORTS + p, so each port's lane writes the bank p of y's PORTS-multiple
// partition, as with a fixed TILES, and DDR_Y writes a row per iteration (Y_ROWS 1: a bank of its own for each of
// its outputs whatever the tiles).
template <class E, int TILES, int PORT_BITS, int PORTS, bool PROBE = false, int TOKENS = 1, int Y_BANKS = 1,
          int XCOLS = E::MAX_COLS, int XGROUPS = XCOLS / E::GROUP, bool VAR_TILES = false>
void brom_ddr_gemv_rt(int n, int rows, int cols, const act_t xq[TOKENS][XCOLS], const float a_scale[TOKENS][XGROUPS],
                      const rom_word_t *image0, const rom_word_t *image1, const rom_word_t *image2,
                      const rom_word_t *image3, float *y0,
                      float *y1, float *y2, float *y3, acc_t dot_probe[TILES][(E::MAX_COLS / E::GROUP) * E::MAX_ROWS],
                      acc_t xsum_out[E::MAX_COLS / E::GROUP], Cycles &cyc, int tiles_rt = TILES) {
  static_assert(PORTS >= 1 && PORTS <= 4, "one to four weight ports");
  static_assert(!VAR_TILES || TILES % PORTS == 0, "run-time tiles: multiples of the ports");
  static_assert(TOKENS >= 1 && TOKENS <= MAX_TOKEN_LANES, "one to MAX_TOKEN_LANES token lanes");
  typedef DdrStepConfig<E::GROUP, E::BITS, E::DP, E::SF, E::CQ> D;
  typedef DdrStream<D, PORT_BITS> P;
  typedef typename D::S S;
  constexpr int GROUP = E::GROUP, NG_MAX = E::MAX_COLS / GROUP, QUADS = S::QUADS, STEP_WORDS = D::STEP_WORDS;
  // LANES and EX_BANKS name the partitions of acc, fin and ex: static, so that the object's debug information
  // keeps their values (the footprint check lays those arrays out by them)
  static constexpr int LANES = P::LANES, EX_BANKS = P::EX_BANKS;
  constexpr int CHUNK_WORDS = P::CHUNK_WORDS, PARAM_CHUNKS = P::PARAM_CHUNKS;
  constexpr int BLOCK_CHUNKS = P::BLOCK_CHUNKS, BLOCK_STEPS = D::BLOCK_STEPS, EX_ROWS = D::Q8 ? E::MAX_ROWS : 1;
  constexpr bool LANE_BANKS = P::lanes(E::ROW_ALIGN), Y_AFTER = P::y_after(E::MIN_ROWS, E::ROW_ALIGN);
  constexpr int MAX_ROUNDS = P::rounds(TILES, PORTS), Y_ROWS = VAR_TILES ? 1 : P::y_rows(TILES, PORTS, Y_BANKS);
  constexpr int Y_II = P::y_ii(Y_ROWS);
  // the tensor's tiles (a constant unless VAR_TILES), its rounds, and a row's first output of a round: row * tiles + t0
  const int tiles = VAR_TILES ? tiles_rt : TILES, rounds = VAR_TILES ? tiles / PORTS : MAX_ROUNDS;
  // the pragmas'
  constexpr int CHUNK_II = P::chunk_ii(E::MIN_ROWS, E::ROW_ALIGN), ACC_DISTANCE = P::acc_distance(E::MIN_ROWS);
  constexpr int EX_DISTANCE = PARAM_CHUNKS + 1, MAX_ROWS = E::MAX_ROWS;
  constexpr int MAX_CHUNKS = (int)(P::prefix_chunks(E::MAX_ROWS) + P::chunks(E::MAX_ROWS, E::MAX_COLS));
  (void)CHUNK_II;
  (void)Y_II;
  (void)ACC_DISTANCE;
  (void)EX_BANKS;
  (void)EX_DISTANCE;
  (void)MAX_ROWS;
  (void)MAX_CHUNKS;
  (void)MAX_ROUNDS;

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
  // a token lane's and port's tile's accumulators: a lane reads and writes its bank each cycle
  float acc[TOKENS][PORTS][E::MAX_ROWS];
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = acc type = complete dim = 2
#pragma HLS ARRAY_PARTITION variable = acc type = cyclic factor = LANES dim = 3
  // y after: a round's sums (its last group's), two sets: the lanes write the round's while y reads the previous
  // round's, a write and a read per bank
  constexpr int FIN_SETS = Y_AFTER ? 2 : 1, FIN_ROWS = Y_AFTER ? E::MAX_ROWS : 1;
  float fin[TOKENS][FIN_SETS][PORTS][FIN_ROWS];
#pragma HLS ARRAY_PARTITION variable = fin type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = fin type = complete dim = 2
#pragma HLS ARRAY_PARTITION variable = fin type = complete dim = 3
#pragma HLS ARRAY_PARTITION variable = fin type = cyclic factor = LANES dim = 4
  scale_word_t ex[PORTS][EX_ROWS]; // q8: a port's tile's row exponents
#pragma HLS ARRAY_PARTITION variable = ex type = complete dim = 1
#pragma HLS ARRAY_PARTITION variable = ex type = cyclic factor = EX_BANKS dim = 2
  rom_word_t prm[PORTS][D::PARAM_WORDS]; // a port's block's scale entries, read before its planes
#pragma HLS ARRAY_PARTITION variable = prm type = complete

DDR_TOKENS: // a candidate stage per token lane, the block's tokens side by side
  for (int c = 0; c < TOKENS; ++c) {
#pragma HLS UNROLL
    if (c == 0 || c < n) // a block has a token at least
      brom_candidates<E::MAX_COLS, GROUP, E::DP, E::CQ>(cols, xq[c], cand[c], xg[c], xsum[c]);
  }

  const int ng = cols / GROUP, steps = D::steps(rows, cols), chunks = (int)P::chunks(rows, cols);
  const int stream = P::prefix_chunks(rows) + chunks, row_lanes = rows / LANES;
  const long long tile_words = D::tile_words(rows, cols);
DDR_ROUNDS:
  for (int t0 = 0; t0 < rounds * PORTS; t0 += PORTS) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_ROUNDS
    const int set = Y_AFTER ? (t0 / PORTS) & 1 : 0, prev = FIN_SETS - 1 - set; // y after: the two sets alternate
    const int y_rows = Y_AFTER && t0 > 0 ? rows : 0; // the previous round's outputs, written in this chunk loop
    // the chunk's place in its block (kc, block b) and the (group, row) of the next step; lanes: the plane chunk's
    // group and first row LANES * q
    int kc = 0, b = 0, g = 0, r = 0, q = 0;
  DDR_CHUNKS: // a tile's one burst: its q8 exponent prefix, then its blocks
    for (int k = 0; k < (stream > y_rows ? stream : y_rows); ++k) {
#pragma HLS PIPELINE II = CHUNK_II
#pragma HLS LOOP_TRIPCOUNT min = 1 max = MAX_CHUNKS
#pragma HLS DEPENDENCE variable = acc type = inter direction = RAW distance = ACC_DISTANCE dependent = true
#pragma HLS DEPENDENCE variable = ex type = inter direction = RAW distance = EX_DISTANCE dependent = true
#pragma HLS DEPENDENCE variable = fin type = inter dependent = false
      const bool exps = k < stream - chunks; // a chunk of the prefix
      const bool planes = !exps && kc >= PARAM_CHUNKS;
      const int first = b * BLOCK_STEPS + (kc - PARAM_CHUNKS) * LANES; // a plane chunk's first step
      // the chunk's steps' (group, row), the same for every port's tile; lanes: lane i owns bank i of acc (its rows'
      // exponents are in banks of their own)
      int grp_of[LANES], row_of[LANES];
#pragma HLS ARRAY_PARTITION variable = grp_of type = complete
#pragma HLS ARRAY_PARTITION variable = row_of type = complete
      for (int i = 0; i < LANES; ++i) {
#pragma HLS UNROLL
        grp_of[i] = g;
        row_of[i] = LANE_BANKS ? LANES * q + i : r;
        if (!LANE_BANKS && planes && first + i < steps && ++r == rows) {
          r = 0;
          ++g;
        }
      }
      if (LANE_BANKS && planes && ++q == row_lanes) {
        q = 0;
        ++g;
      }
      for (int c = 0; c < TOKENS; ++c) {
#pragma HLS UNROLL
        for (int p = 0; p < PORTS; ++p) {
#pragma HLS UNROLL
          // y after: row k of the previous round's tiles, PORTS consecutive outputs (tile t holds rows t, t + TILES..)
          if (c < n && k < y_rows) token_out(c, y0, y1, y2, y3)[y_at<VAR_TILES, PORTS>(k, tiles, t0 - PORTS, p)] =
              fin[c][prev][p][k];
        }
      }
      for (int p = 0; p < PORTS; ++p) {
#pragma HLS UNROLL
        const int t = t0 + p;
        if (t < tiles && k < stream) { // the last round's missing tiles (tiles not a multiple of PORTS) idle
          rom_word_t w[CHUNK_WORDS];
#pragma HLS ARRAY_PARTITION variable = w type = complete
          for (int j = 0; j < CHUNK_WORDS; ++j) {
#pragma HLS UNROLL
            // consecutive: a burst per tile (tile t0 + p of port p)
            w[j] = ddr_port(p, image0, image1, image2, image3)[(long long)(t0 + p) * tile_words +
                                                               (long long)k * CHUNK_WORDS + j];
          }
          if (exps) { // two rows' exponents a word, each row's into its bank
            for (int j = 0; j < 2 * CHUNK_WORDS; ++j) {
#pragma HLS UNROLL
              const int row = 2 * CHUNK_WORDS * k + j;
              if (row < EX_ROWS && row < rows) ex[p][row] = (scale_word_t)(w[j / 2] >> (16 * (j & 1)));
            }
          } else if (!planes) { // the block's scale entries
            for (int j = 0; j < CHUNK_WORDS; ++j) {
#pragma HLS UNROLL
              prm[p][kc * CHUNK_WORDS + j] = w[j];
            }
          }
          for (int i = 0; i < LANES; ++i) {
#pragma HLS UNROLL
            const int step = first + i, grp = grp_of[i], row = row_of[i];
            if (planes && step < steps) { // the last block's missing steps are padding
              const HalfPair dm = D::scales(prm[p], step % BLOCK_STEPS, ex[p], D::Q8 ? row : 0);
              for (int c = 0; c < TOKENS; ++c) {
#pragma HLS UNROLL
                if (c < n) {
                  const acc_t dot =
                      brom_step_dot<GROUP, E::BITS, E::DP>(&w[i * STEP_WORDS], cand[c][grp], xg[c][grp]);
                  if (PROBE && c == 0) dot_probe[t][step] = dot;
                  const float term = brom_term(a_scale[c][grp], dm.d, dm.m, dot, xsum[c][grp]);
                  const float sum = (grp == 0) ? term : acc[c][p][row] + term;
                  if (grp < ng - 1) acc[c][p][row] = sum;
                  else if (Y_AFTER) fin[c][set][p][row] = sum;
                  else token_out(c, y0, y1, y2, y3)[y_at<VAR_TILES, PORTS>(row, tiles, t0, p)] = sum;
                }
              }
            }
          }
        }
      }
      if (!exps && ++kc == BLOCK_CHUNKS) {
        kc = 0;
        ++b;
      }
    }
  }
DDR_Y: // the lanes outrun y's write port: the last round's outputs from its accumulators, Y_ROWS rows of the ports'
       // PORTS consecutive outputs per iteration of Y_II cycles (the earlier rounds' went out during the next round's
       // chunk loop)
  const int last = (rounds - 1) * PORTS; // the last round's first tile
  for (int k = 0; k < (Y_AFTER ? (rows + Y_ROWS - 1) / Y_ROWS : 0); ++k) {
#pragma HLS PIPELINE II = Y_II
#pragma HLS LOOP_TRIPCOUNT min = 0 max = MAX_ROWS
    for (int i = 0; i < Y_ROWS; ++i) {
#pragma HLS UNROLL
      const int row = k * Y_ROWS + i;
      for (int c = 0; c < TOKENS; ++c) {
#pragma HLS UNROLL
        for (int p = 0; p < PORTS; ++p) {
#pragma HLS UNROLL
          if (c < n && last + p < tiles && row < rows)
            token_out(c, y0, y1, y2, y3)[y_at<VAR_TILES, PORTS>(row, tiles, last, p)] =
                fin[c][(rounds - 1) & (FIN_SETS - 1)][p][row];
        }
      }
    }
  }
  for (int k = 0; k < NG_MAX; ++k) {
#pragma HLS UNROLL
    if (k < ng) xsum_out[k] = xsum[0][k];
  }
  P::count(cyc, rounds, rows, cols, E::MIN_ROWS, E::ROW_ALIGN, Y_ROWS);
}

} // namespace roma

#endif // ROMA_BROM_DDR_H
