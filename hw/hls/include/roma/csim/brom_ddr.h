// ROMA-FPGA DDR-streamed tile, C simulation only: a DDR tile as the repacker's source, so the emulated board
// runs a DDR tensor through the same packed GEMV as a ROM one (csim/brom_tile.h). Never read by Vitis HLS.
#ifndef ROMA_CSIM_BROM_DDR_H
#define ROMA_CSIM_BROM_DDR_H
#ifdef __SYNTHESIS__
#error "C simulation only: synthesis reads ../brom_ddr.h"
#endif

#include "../brom_ddr.h"
#include "brom_tile.h"

namespace roma {

template <int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF = ScaleFormat::Fp16>
struct DdrTileSource {
  typedef DdrTileConfig<ROWS, COLS, GROUP, BITS, Datapath::LutSelect, SF> D;
  const rom_word_t *tile; // the tile's first word in the ddr_weights buffer
  const rom_word_t *block(int step) const { return tile + D::PREFIX_WORDS + D::block_offset(step); }
  const rom_word_t *step_planes(int step) const { return block(step) + D::planes_offset(step % D::BLOCK_STEPS); }
  HalfPair scales(int step) const {
    const int r = step % ROWS; // q8: the row's exponents from the prefix
    const scale_word_t ex = D::Q8 ? (scale_word_t)(tile[r / 2] >> (16 * (r % 2))) : 0;
    return D::scales(block(step), step % D::BLOCK_STEPS, &ex, 0);
  }
  half_bits_t scale(int step) const { return scales(step).d; }
  half_bits_t minimum(int step) const { return scales(step).m; }
};

template <int ROWS, int COLS, int GROUP, int BITS, ScaleFormat SF = ScaleFormat::Fp16>
void csim_pack_ddr_tile(const rom_word_t *tile, CsimPackedTile &pk) {
  csim_pack_tile_from<ROWS, COLS, GROUP, BITS>(DdrTileSource<ROWS, COLS, GROUP, BITS, SF>{tile}, pk);
}

} // namespace roma

#endif // ROMA_CSIM_BROM_DDR_H
