// ROMA-FPGA embedding lookup: one row of the ROM token-embedding matrix -> fp32, w = d*q + m.
//
// Layout decision: the B-ROM image layout of brom_tile.h (layout 1, written by artifact/brom_image.py), not a
// separate row-major image. Reasons:
//   - SmolLM2 (like most small LLaMAs) ties the LM head to the token embedding: with one layout the same ROM
//     banks serve both the lm-head GEMV (brom_tile_gemv) and this lookup, so the 49152x576 matrix is stored
//     once (a row-major copy would double the largest tensor of the model).
//   - A one-row read is still fast in layout 1: row r's group g lives at word (g*ROWS + r)*WPS of its tile,
//     and the WPS words of one (g, r) come from the WPS cyclic banks in one cycle, so a row costs NG
//     cycles (18 for 576 at G=32), GROUP values per cycle. A row-major layout would not be faster at the
//     same bank width.
// The row's tile is token % TILES (a TILES-way mux on the banks' outputs), its row in the tile token / TILES (tile t
// holds rows t, t + TILES, ...: brom_tile.h).
// Exact: d*q is exact in fp32 (11-bit significand times an 8-bit code) and one rounding adds m, the same two
// fp32 operations as QuantizedMatrix.dequantize (compile with -ffp-contract=off).
//
// Loop: ROW, NG iterations, II=1 (+ ROM latency, fp16 decode, mul, add).
//
// A DDR-streamed embedding (placement "DDR-stream", brom_ddr.h's image layout) is read the same way through
// the ddr_weights port: per group, the step's scale word and its WPS plane words, two reads of the same block
// (embedding_row_ddr: ROW_DDR at II = 1 for the scale word + the port words of a step's planes, at the build's
// weight port width, plus the AXI read latency once).
// Scale formats (SF, brom_tile.h): fp16 scale and minimum per step, or q8 (a build with `--scales q8` whose
// embedding is requantized: the tied lm head streams 16 words of scale entries per 32 steps instead of 32): the
// step's 8-bit pair with the row's two exponents, decoded to the same fp16 values by brom_scales; a DDR row reads
// its exponents first, one word of the tile's prefix (one more access before the loop).
#ifndef ROMA_EMBEDDING_H
#define ROMA_EMBEDDING_H

#include <cstdint>

#include "brom_ddr.h"
#include "brom_tile.h"
#include "layer_cycles.h"
#include "types.h"

namespace roma {

template <int TILES, int ROWS, int COLS, int GROUP, int BITS>
struct EmbeddingConfig {
  typedef BromTileConfig<ROWS, COLS, GROUP, BITS> Tile;
  static constexpr int NG = Tile::NG;
  static constexpr int VOCAB = TILES * ROWS;
  static constexpr int DEPTH = timing::ROM_LATENCY + 1 /* tile mux */ + 1 /* fp16 decode */ +
                               timing::FMUL_LATENCY + timing::FADD_LATENCY + 1;
  static constexpr uint64_t CYCLES = (uint64_t)NG * timing::II + DEPTH;
};

// A DDR-streamed embedding's row through a PORT_BITS-wide port: per group a step's scale word, then its planes,
// WPS words at a multiple of STEP_WORDS in its aligned block (the port words of one chunk).
template <int TILES, int ROWS, int COLS, int GROUP, int BITS, int PORT_BITS, ScaleFormat SF = ScaleFormat::Fp16>
struct EmbeddingDdrConfig : EmbeddingConfig<TILES, ROWS, COLS, GROUP, BITS> {
  typedef EmbeddingConfig<TILES, ROWS, COLS, GROUP, BITS> C;
  typedef DdrStream<DdrStepConfig<GROUP, BITS, Datapath::LutSelect, SF>, PORT_BITS> P;
  static constexpr int WPS = C::Tile::WPS;
  static constexpr int II = P::port_cycles(1) + P::CHUNK_CYCLES;
  static constexpr uint64_t EXPONENTS = SF == ScaleFormat::Q8 ? timing::AXI_READ_LATENCY + 1 : 0; // q8: one read
  static constexpr uint64_t CYCLES =
      EXPONENTS + (uint64_t)C::NG * II + C::DEPTH - timing::ROM_LATENCY + timing::AXI_READ_LATENCY;
};

// The GROUP weights of one (group, row) step, w = d*q + m, from its BITS plane words.
template <int GROUP, int BITS>
inline void embedding_group(const rom_word_t *w, float d, float m, float *out) {
#pragma HLS INLINE
  for (int j = 0; j < GROUP; ++j) {
#pragma HLS UNROLL
    out[j] = d * (float)rom_code<GROUP, BITS>(w, j) + m;
  }
}

// out[COLS] = dequantized row `token` (0 <= token < TILES*ROWS; the caller validates the id), from the ROM's
// planes and its scale arrays in format SF (brom_tile.h: fp16 scales and minimums, or q8 steps and row exponents).
template <int TILES, int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF = ScaleFormat::Fp16>
void embedding_row(int token,
                   const rom_word_t planes[TILES][BromTileConfig<ROWS, COLS, GROUP, BITS>::PLANE_WORDS],
                   const scale_word_t prm[TILES][BromTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF>::PARAMS],
                   const scale_word_t aux[TILES][BromTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF>::AUX],
                   float out[COLS], LayerCycles &cyc) {
  typedef EmbeddingConfig<TILES, ROWS, COLS, GROUP, BITS> C;
  constexpr int NG = C::NG, WPS = C::Tile::WPS;
#pragma HLS ARRAY_PARTITION variable = out type = cyclic factor = GROUP dim = 1
  const int tile = token % TILES;
  const int r = token / TILES;
ROW:
  for (int g = 0; g < NG; ++g) {
#pragma HLS PIPELINE II = timing::II
    const int step = g * ROWS + r;
    const HalfPair dm = brom_scales<SF>(prm[tile][step], aux[tile][SF == ScaleFormat::Q8 ? r : step]);
    embedding_group<GROUP, BITS>(&planes[tile][step * WPS], half_to_float(dm.d), half_to_float(dm.m),
                                 &out[g * GROUP]);
  }
  cyc.embedding += C::CYCLES;
}

// out[COLS] = row `token` of a DDR-streamed embedding whose image starts at `image` (an m_axi pointer).
template <int PORT_BITS, int TILES, int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF = ScaleFormat::Fp16>
void embedding_row_ddr(int token, const rom_word_t *image, float out[COLS], LayerCycles &cyc) {
  typedef EmbeddingDdrConfig<TILES, ROWS, COLS, GROUP, BITS, PORT_BITS, SF> C;
  typedef DdrTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF> D;
  constexpr int NG = C::NG, WPS = C::WPS, DDR_II = C::II;
  (void)DDR_II; // used by the PIPELINE pragma
#pragma HLS ARRAY_PARTITION variable = out type = cyclic factor = GROUP dim = 1
  const int tile = token % TILES;
  const int r = token / TILES;
  const rom_word_t *src = image + (long long)tile * D::TILE_WORDS;
  // q8: the row's exponents, from the tile's prefix (two rows a word); fp16 reads none
  const scale_word_t ex[1] = {D::Q8 ? (scale_word_t)(src[r / 2] >> (16 * (r & 1))) : (scale_word_t)0};
  const rom_word_t *blocks = src + D::PREFIX_WORDS;
ROW_DDR:
  for (int g = 0; g < NG; ++g) {
#pragma HLS PIPELINE II = DDR_II
    const int step = g * ROWS + r;
    const rom_word_t *block = blocks + D::block_offset(step);
    const int i = step % D::BLOCK_STEPS;
    rom_word_t w[WPS];
#pragma HLS ARRAY_PARTITION variable = w type = complete
    for (int k = 0; k < WPS; ++k) {
#pragma HLS UNROLL
      w[k] = block[D::planes_offset(i) + k];
    }
    const HalfPair dm = D::scales(block, i, ex, 0);
    embedding_group<GROUP, BITS>(w, half_to_float(dm.d), half_to_float(dm.m), &out[g * GROUP]);
  }
  cyc.embedding += C::CYCLES;
}

} // namespace roma

#endif // ROMA_EMBEDDING_H
