// Synthesis wrapper of the B-ROM tile kernels (tb/tb_brom_tile.cpp checks them in C simulation): one
// activation quantizer + multi-tile GEMV at a fixed shape, so Vitis HLS reports its II, latency and resources
// on its own (run_hls_brom_tile.tcl). Shape: SmolLM2-135M's wq (576 x 576) at 4-bit G32, 4 tiles of 144 rows,
// the LUT-select datapath (-DROMA_DATAPATH=DspMac for the DSP one). The ROM arrays are arguments here (BRAM
// ports), not ROMs: this measures the datapath; roma_core.cpp binds the real ROMs.
#include "roma/act_quant.h"
#include "roma/brom_tile.h"

#ifndef ROMA_DATAPATH
#define ROMA_DATAPATH LutSelect
#endif

namespace {
constexpr int TILES = 4, ROWS = 144, COLS = 576, GROUP = 32, BITS = 4;
typedef roma::BromTileConfig<ROWS, COLS, GROUP, BITS, roma::Datapath::ROMA_DATAPATH> C;
} // namespace

extern "C" void roma_syn_brom_tile(const float x[COLS], const roma::rom_word_t planes[TILES][C::PLANE_WORDS],
                                   const roma::half_bits_t scales[TILES][C::PARAMS],
                                   const roma::half_bits_t mins[TILES][C::PARAMS], float y[TILES * ROWS]) {
  roma::act_t xq[COLS]; // ACT_LANES per cycle from the quantizer into the candidate stage
#pragma HLS ARRAY_PARTITION variable = xq type = cyclic factor = roma::ACT_LANES dim = 1
  float a_scale[C::NG];
  roma::acc_t dot_probe[TILES][C::PARAMS];
  roma::acc_t xsum[C::NG];
  roma::Cycles cyc;
  roma::act_quant<COLS, GROUP>(COLS, x, xq, a_scale, cyc);
  roma::brom_gemv_tiles<TILES, ROWS, COLS, GROUP, BITS, roma::Datapath::ROMA_DATAPATH>(
      xq, a_scale, planes, scales, mins, y, dot_probe, xsum, cyc);
}
